"""From detections to events: one clip per passing product, not one per frame.

A CID seen again within `cooldown_s` of its last sighting belongs to the same event: it is
counted and suppressed, and the clip keeps its exact pre-roll + post-roll. Only with
`extend` (clip.extend_while_in_view) does a sighting while the clip still records push its
post-roll back (never past `max_s` from the clip's start). Different CIDs are independent events that share the ring.
Pure logic on capture times, so it is tested without video.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import Enum
from typing import Any

from edge_agent.delivery.contract import rfc3339
from edge_agent.pipeline.detector import Detection


class Action(Enum):
    NEW = "new"
    EXTEND = "extend"
    SUPPRESSED = "suppressed"


@dataclass
class Event:
    """One passing product, from its first sighting to its delivery: the tracker, the clip stage, the
    uploader's listeners and the replay report all hold this one object."""

    event_id: str
    cid: str
    first: Detection
    start_t: float  # wanted clip start: first sighting - pre-roll
    end_t: float  # clip end: first sighting + post-roll (extended: last sighting + post-roll, capped)
    last_t: float
    hits: int = 1
    closed: bool = False  # its recording is cut: later sightings are suppressed
    # what became of it (set by the clip stage, then by delivery listeners)
    clip: dict[str, Any] | None = None  # metadata.clip as sent
    clip_error: str | None = None
    clip_ms: float | None = None  # cut + remux/encode + validate
    queued: bool = False
    upload_result: str | None = None  # delivered, duplicate, quarantined

    @property
    def detected_t(self) -> float:
        return self.first.t

    @property
    def detected_at(self) -> str:
        return rfc3339(self.first.wall)

    def record_upload(self, result: str) -> None:
        """An uploader result: a retry or an attempt we cut short changes nothing yet."""
        if result not in ("retry", "stopped"):
            self.upload_result = result

    @property
    def uploaded(self) -> bool:
        return self.upload_result in ("delivered", "duplicate")


class EventTracker:
    """Not thread-safe: owned by the detector thread; `close()` may be called from the
    recording callback only through the pipeline, which serialises it."""

    def __init__(self, cooldown_s: float, pre_roll_s: float, post_roll_s: float, max_s: float,
                 extend: bool = False):
        self.configure(cooldown_s, pre_roll_s, post_roll_s, max_s, extend)
        self._by_cid: dict[str, Event] = {}

    def configure(self, cooldown_s: float, pre_roll_s: float, post_roll_s: float, max_s: float,
                  extend: bool = False) -> None:
        """Live reload: applies to events opened or extended from now on."""
        self.cooldown_s = cooldown_s
        self.pre_roll_s = pre_roll_s
        self.post_roll_s = post_roll_s
        self.max_s = max_s
        self.extend = extend

    def observe(self, cid: str, det: Detection) -> tuple[Action, Event]:
        ev = self._by_cid.get(cid)
        if ev is not None and det.t - ev.last_t <= self.cooldown_s:
            ev.last_t = max(ev.last_t, det.t)
            ev.hits += 1
            if ev.closed or not self.extend:
                return Action.SUPPRESSED, ev
            new_end = min(det.t + self.post_roll_s, ev.start_t + self.max_s)
            if new_end > ev.end_t:
                ev.end_t = new_end
                return Action.EXTEND, ev
            return Action.SUPPRESSED, ev
        start = det.t - self.pre_roll_s
        ev = Event(str(uuid.uuid4()), cid, det, start, min(det.t + self.post_roll_s, start + self.max_s), det.t)
        self._by_cid[cid] = ev
        self._prune(det.t)
        return Action.NEW, ev

    def close(self, event: Event) -> None:
        """The event's recording has finished: later sightings are suppressed, not extensions."""
        event.closed = True

    def _prune(self, now_t: float) -> None:
        stale = [c for c, e in self._by_cid.items() if e.closed and now_t - e.last_t > self.cooldown_s]
        for c in stale:
            del self._by_cid[c]
