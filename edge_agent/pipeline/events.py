"""From detections to events: one clip per passing product, not one per frame.

A CID seen again within `cooldown_s` of its last sighting belongs to the same event: it is
counted and suppressed, and the clip keeps its exact pre-roll + post-roll. Only with
`extend` (clip.extend_while_in_view) does a sighting while the clip still records push its
post-roll back (never past `max_s` from the clip's start). Different CIDs are independent events that share the ring.
Pure logic on capture times, so it is tested without video.

What became of each event (its clip, the spool's and the server's answers) is kept by the
`EventLog`, the one place the detect, clip and upload threads record it and readers look it up.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import Enum
from types import MappingProxyType
from typing import Any

from edge_agent.delivery.contract import rfc3339
from edge_agent.delivery.outcome import UploadResult
from edge_agent.pipeline.qr_detector import Detection


class Action(Enum):
    NEW = "new"
    EXTEND = "extend"
    SUPPRESSED = "suppressed"


@dataclass
class OpenEvent:
    """The detect thread's own record of an event while its CID may still be seen: the tracker alone
    writes it, and tells the event log (`EventLog.opened`/`sighted`) what the other threads may read."""

    event_id: str
    cid: str
    first: Detection
    start_t: float  # wanted clip start: first sighting - pre-roll
    end_t: float  # clip end: first sighting + post-roll (extended: last sighting + post-roll, capped)
    last_t: float
    hits: int = 1
    closed: bool = False  # its recording is cut (the ring refused to extend it): later sightings are suppressed

    @property
    def detected_t(self) -> float:
        return self.first.t


class Delivery(Enum):
    """What became of an event, as the live view, `/api/status` and the replay report show it."""

    RECORDING = "recording"  # opened; its clip is not made yet
    QUEUED = "queued"  # its clip (or its CID alone, with clip.error) is in the spool or the folder
    REFUSED = "refused"  # the spool did not keep it (full, closed)
    DELIVERED = "delivered"
    DUPLICATE = "duplicate"  # the server had it already: delivered too
    QUARANTINED = "quarantined"

    @classmethod
    def of_upload(cls, result: UploadResult) -> Delivery | None:
        """The uploader's result as a delivery state; None for one that changes nothing yet (a retry, an
        attempt cut short by a stop)."""
        return _FINAL_UPLOADS.get(result)


_FINAL_UPLOADS = {UploadResult.DELIVERED: Delivery.DELIVERED, UploadResult.DUPLICATE: Delivery.DUPLICATE,
                  UploadResult.QUARANTINED: Delivery.QUARANTINED}


@dataclass(frozen=True)
class EventSnapshot:
    """One event as it stands: readers get this frozen copy, never the log's own state."""

    event_id: str
    cid: str
    first: Detection
    hits: int
    last_t: float
    clip: Mapping[str, Any] | None = None  # metadata.clip as sent (read-only)
    clip_error: str | None = None
    clip_ms: float | None = None  # cut + remux/encode + validate
    queued: bool | None = None  # None until the clip stage hands it to the sink
    upload: Delivery | None = None  # the uploader's final result

    @property
    def detected_t(self) -> float:
        return self.first.t

    @property
    def detected_at(self) -> str:
        return rfc3339(self.first.wall)

    @property
    def delivery(self) -> Delivery:
        """The state to show: the uploader's result once there is one (it may come before the clip
        stage's own `clip_made` returns), else the sink's, else still recording."""
        if self.upload is not None:
            return self.upload
        if self.queued is None:
            return Delivery.RECORDING
        return Delivery.QUEUED if self.queued else Delivery.REFUSED

    @property
    def uploaded(self) -> bool:
        return self.upload in (Delivery.DELIVERED, Delivery.DUPLICATE)


class EventLog:
    """Owns every event from its first sighting to its delivery, behind one lock. Each thread makes its
    own transitions (detect: `opened`, `sighted`; clip: `clip_made`; uploader: `upload_result`), each
    setting only its own fields, so their order does not matter; readers get frozen snapshots.

    `keep` bounds a daemon's memory: past it the oldest events whose clip is made are forgotten (an event
    still recording never is: the clip stage needs it). None keeps the whole run (replay's report)."""

    def __init__(self, keep: int | None = None):
        self.keep = keep
        self._lock = threading.Lock()
        self._events: OrderedDict[str, EventSnapshot] = OrderedDict()

    # --- transitions --------------------------------------------------------------------------

    def opened(self, ev: OpenEvent) -> EventSnapshot:
        snap = EventSnapshot(ev.event_id, ev.cid, ev.first, ev.hits, ev.last_t)
        with self._lock:
            self._events[ev.event_id] = snap
            self._trim()
        return snap

    def sighted(self, ev: OpenEvent) -> None:
        """The tracker folded another sighting into `ev` (its count and last time go into the metadata)."""
        with self._lock:
            snap = self._events.get(ev.event_id)
            if snap is not None:
                self._events[ev.event_id] = replace(snap, hits=ev.hits, last_t=ev.last_t)

    def clip_made(self, event_id: str, clip: Mapping[str, Any], *, error: str | None, ms: float | None,
                  queued: bool) -> EventSnapshot | None:
        """The clip stage handed the event to the sink (`queued`: the sink kept it)."""
        with self._lock:
            snap = self._events.get(event_id)
            if snap is None:
                return None
            snap = replace(snap, clip=MappingProxyType(dict(clip)), clip_error=error, clip_ms=ms, queued=queued)
            self._events[event_id] = snap
            self._trim()
            return snap

    def upload_result(self, event_id: str, _cid: str, result: UploadResult) -> None:
        """Uploader listener (`Uploader.on_result`); results for events no longer (or never) here, such as
        clips queued before a restart, change nothing."""
        state = Delivery.of_upload(result)
        if state is None:
            return
        with self._lock:
            snap = self._events.get(event_id)
            if snap is not None:
                self._events[event_id] = replace(snap, upload=state)

    # --- readers ------------------------------------------------------------------------------

    def get(self, event_id: str) -> EventSnapshot | None:
        with self._lock:
            return self._events.get(event_id)

    def snapshot(self) -> list[EventSnapshot]:
        """Every event kept, in the order they were opened."""
        with self._lock:
            return list(self._events.values())

    def _trim(self) -> None:
        if self.keep is None or len(self._events) <= self.keep:
            return
        for event_id in [e for e, s in self._events.items() if s.queued is not None]:
            del self._events[event_id]
            if len(self._events) <= self.keep:
                return


class EventTracker:
    """Not thread-safe: owned by the detect thread, as are the `OpenEvent`s it returns."""

    def __init__(self, cooldown_s: float, pre_roll_s: float, post_roll_s: float, max_s: float,
                 extend: bool = False):
        self.configure(cooldown_s, pre_roll_s, post_roll_s, max_s, extend)
        self._by_cid: dict[str, OpenEvent] = {}

    def configure(self, cooldown_s: float, pre_roll_s: float, post_roll_s: float, max_s: float,
                  extend: bool = False) -> None:
        """Live reload: applies to events opened or extended from now on."""
        self.cooldown_s = cooldown_s
        self.pre_roll_s = pre_roll_s
        self.post_roll_s = post_roll_s
        self.max_s = max_s
        self.extend = extend

    def observe(self, cid: str, det: Detection) -> tuple[Action, OpenEvent]:
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
        ev = OpenEvent(str(uuid.uuid4()), cid, det, start, min(det.t + self.post_roll_s, start + self.max_s), det.t)
        self._by_cid[cid] = ev
        self._prune(det.t)
        return Action.NEW, ev

    def close(self, event: OpenEvent) -> None:
        """The ring refused to extend the event's recording (already cut): later sightings are suppressed."""
        event.closed = True

    def _prune(self, now_t: float) -> None:
        """Past its cooldown a CID's next sighting opens a new event whether its old one is remembered
        or not, so it is forgotten then (its recording cut or not: only the ring knows, and need not say)."""
        stale = [c for c, e in self._by_cid.items() if now_t - e.last_t > self.cooldown_s]
        for c in stale:
            del self._by_cid[c]
