"""The ring of recent compressed video, and the recordings cut from it.

Compressed packets cost 100x less memory than raw frames (5 s of 1080p: ~3 MB of
H.264 vs 445 MiB of YUV), so the ring keeps what the source gives. It is bounded
twice: by seconds (pre-roll + post-roll + a margin for detector lag and a GOP) and
by a hard byte cap, so a camera that floods or stalls can never grow memory.

A detection opens a `Recording`: it copies the ring from the last keyframe at or
before `t - pre_roll` (the clip hides that lead-in) and then receives every new packet
shown before its end time, which later sightings of the same CID may push back when
clip.extend_while_in_view is on. This way a clip may be longer than the ring (up to
clip.max_s) and the capture thread only appends to lists.

A recording is handed over (`on_finished`, the clip stage's `RecordingQueue.put`) as a frozen `Finished`
once its packets are all in and detection has analysed past its end (`analysed`, from the detect
thread): its clip's track is then whole, and the clip stage waits on nobody. A flush (a stop, a source
restart, the end of the video) hands every open recording over at once.

The ring is one of capture's packet consumers (`capture.consumer.PacketConsumer`): `offer` each
packet, `end` when the video is over, `status`.

A source session (a camera reopened, the next file of a replay) starts a new stream that cannot be
decoded with the old one's parameters, so a recording holds one session's packets only. Detection lags
capture, so a read of the old session's last seconds may come after the new session began: the old
packets stay in the ring (evicted by time like any other) and such a read's recording is cut from its
own session's packets, finished at once since no more will come.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from edge_agent.capture.media import Packet
from edge_agent.metrics import Metrics
from edge_agent.pipeline.base import Finished

# A recording takes packets this long past its end before it is finished: with B-frames, frames
# shown just before the end come after a later reference frame in decode order.
REORDER_S = 0.25
# Frame rate assumed where a stream does not say (half a frame is the tolerance of every time edge).
ASSUMED_FPS = 30.0


def half_frame(packets: list[Packet]) -> float:
    """Half a frame's duration: a frame within this of a clip's edge counts as on it. Capture times are
    floats (`detected - pre_roll` may land 1e-9 s before a keyframe at 5.0 s), so an exact comparison
    would pick a neighbouring frame, or the previous GOP, on a rounding error."""
    fps = getattr(packets[-1].stream, "fps", None) if packets else None
    return 0.5 / (fps or ASSUMED_FPS)


def _trim_end(rec: Recording) -> None:
    """Drop the trailing packets no frame before `end_t` needs: those after the last one shown in
    time, in decode order (references come before the frames that use them)."""
    edge = rec.end_t - half_frame(rec.packets)
    last = next((j for j in range(len(rec.packets) - 1, -1, -1) if rec.packets[j].t < edge), None)
    if last is not None:
        del rec.packets[last + 1:]


@dataclass
class Recording:
    """The ring's own record of a clip while it collects packets (detect opens and extends it, capture
    appends): in decode order, from a keyframe at or before `start_t` up to (not including) the first
    packet at or past `end_t`, so the clip shows [start_t, end_t). Handed over as a frozen `Finished`."""

    key: str
    start_t: float
    end_t: float
    packets: list[Packet] = field(default_factory=list)
    session: int = 0  # the source session its packets come from
    # why it starts after `start_t` (the pre-roll is short): "start_of_video" (the video began later), "ring"
    # (evicted); None: it starts there
    truncated_start: str | None = None
    truncated_end: str | None = None  # why it ended before end_t: "shutdown", "source_restart", ...
    # handed over by a flush (stop, source restart) with every other open recording at once: its
    # packets are held already (shared with the ring), so the clip stage's backlog bound does not drop it
    flushed: bool = False


@dataclass
class _Session:
    """A source session whose packets the ring holds."""

    id: int
    first_t: float | None = None  # capture time of its first packet; None: none yet
    end_reason: str = "source_restart"  # what ended it, for the recordings it cuts short


@dataclass(frozen=True)
class RingStatus:
    packets: int
    bytes: int
    span_s: float  # capture seconds between the oldest packet held and the newest
    open_recordings: int


class RingBuffer:
    """Thread-safe: the capture thread offers packets, the detector thread opens and extends recordings."""

    def __init__(
        self,
        keep_s: float,
        max_bytes: int,
        on_finished: Callable[[Finished], None],
        metrics: Metrics | None = None,
    ):
        self.keep_s = keep_s
        self.max_bytes = max_bytes
        self._on_finished = on_finished
        self._metrics = metrics or Metrics()
        self._packets: deque[Packet] = deque()
        self._bytes = 0
        self._lock = threading.Lock()
        self._recordings: dict[str, Recording] = {}
        self._complete: list[Recording] = []  # every packet in; waiting for detection to analyse past the end
        self._analysed_t = -math.inf  # the capture time detection has analysed up to
        # the sessions whose packets are held, oldest first, the last one current: a session's packets are
        # those from its first to the next session's first
        self._sessions: deque[_Session] = deque([_Session(0)])

    def retain(self, keep_s: float) -> None:
        """Live reload of the rolls: the ring keeps `keep_s` from the next packet on."""
        with self._lock:
            self.keep_s = keep_s

    # --- capture side -------------------------------------------------------------------------

    def offer(self, pkt: Packet) -> None:
        """Capture thread: keep a packet. O(1) amortised; never blocks on anything but the short lock
        (a recording it finishes goes to `on_finished`, which must not wait on a camera's thread)."""
        with self._lock:
            if self._sessions[-1].first_t is None:
                self._sessions[-1].first_t = pkt.t
            self._packets.append(pkt)
            self._bytes += pkt.size
            # open recordings are all of the current session: `reset` finishes the others as it begins one
            for rec in list(self._recordings.values()):
                if pkt.t >= rec.end_t + REORDER_S and rec.packets:
                    _trim_end(rec)
                    self._complete.append(rec)
                    del self._recordings[rec.key]
                else:
                    rec.packets.append(pkt)
            self._evict()
            ready = self._take_analysed()
        self._hand_over(ready)

    def analysed(self, t: float) -> None:
        """Detect thread, after each frame: detection has analysed up to capture time `t`; recordings whose
        packets are all in and whose end it has passed go to the clip stage."""
        with self._lock:
            self._analysed_t = max(self._analysed_t, t)
            ready = self._take_analysed()
        self._hand_over(ready)

    def _take_analysed(self) -> list[Recording]:
        """Under the lock: the complete recordings detection has analysed past the end of."""
        if not self._complete:
            return []
        ready: list[Recording] = []
        waiting: list[Recording] = []
        for r in self._complete:  # one pass, by identity (a Recording's == compares its packets)
            (ready if r.end_t - half_frame(r.packets) <= self._analysed_t else waiting).append(r)
        if ready:
            self._complete = waiting
        return ready

    def _hand_over(self, recs: list[Recording]) -> None:
        """Outside the lock (the clip stage's hand-off waits for room in fast replay): each as it is now."""
        for rec in recs:
            self._on_finished(Finished(rec.key, rec.start_t, rec.end_t, tuple(rec.packets), rec.truncated_start,
                                       rec.truncated_end, rec.flushed))

    def _evict(self) -> None:
        """Drop whole GOPs older than `keep_s` (a GOP is useless without its keyframe), then
        anything over the byte cap, oldest first. Ended sessions are kept whole until the current one
        holds `keep_s` of its own: capture times jump between sessions (a replay spaces files apart), and
        the reads of an ended session's last seconds still need its packets."""
        newest = self._packets[-1].t
        if len(self._sessions) > 1:
            current = self._sessions[-1].first_t
            assert current is not None  # the packet just offered began it at the latest
            if newest - current < self.keep_s:
                return self._cap_bytes()
            while self._packets[0].t < current:
                self._bytes -= self._packets.popleft().size
        while len(self._packets) > 1:
            nxt = self._next_keyframe_index(1)
            if nxt is None or self._packets[nxt].t > newest - self.keep_s:
                break
            for _ in range(nxt):
                self._bytes -= self._packets.popleft().size
        self._cap_bytes()

    def _cap_bytes(self) -> None:
        while self._bytes > self.max_bytes and len(self._packets) > 1:
            self._bytes -= self._packets.popleft().size
            self._metrics.ring_evicted_over_cap.inc()
        oldest = self._packets[0].t
        while len(self._sessions) > 1 and (nxt := self._sessions[1].first_t) is not None and nxt <= oldest:
            self._sessions.popleft()  # a session none of whose packets are held any more

    def _next_keyframe_index(self, start: int) -> int | None:
        for i in range(start, len(self._packets)):
            if self._packets[i].keyframe:
                return i
        return None

    def end(self, reason: str = "end_of_video") -> None:
        """The video is over (no more packets, and no more recordings will be opened: called once the
        detector is done too): finish every open recording with what it has; `reason` ("end_of_video",
        "shutdown", "source_restart") goes in the metadata of those cut short."""
        with self._lock:
            recs = self._end_open(reason)
        self._hand_over(recs)

    def reset(self, reason: str = "source_restart") -> None:
        """A new source session: the old one's open recordings are finished with what they have (its packets
        cannot be decoded with the new stream's parameters), `reason` ("source_restart", or "end_of_video"
        for the next file of a replay) in their metadata; its packets stay for reads of its last seconds that
        detection has not made yet. One lock hold: a recording the detect thread opens meanwhile is of the
        new session, or of the ended one and finished at once (`start_recording`)."""
        with self._lock:
            recs = self._end_open(reason)
            ended = self._sessions[-1]
            ended.end_reason = reason
            if ended.first_t is None:
                self._sessions.pop()  # a session that gave no packet
            self._sessions.append(_Session(ended.id + 1))
        self._hand_over(recs)

    def _end_open(self, reason: str) -> list[Recording]:
        """Under the lock: every open recording finished with what it has, and every complete one, to hand
        over at once."""
        recs = [self._cut_short(rec, reason) for rec in self._recordings.values()]
        self._recordings.clear()
        complete, self._complete = self._complete, []
        return complete + recs

    @staticmethod
    def _cut_short(rec: Recording, reason: str) -> Recording:
        """A recording no more packets will come for, `reason` in its metadata if a frame is missing. Handed
        over as flushed; one without packets too: its read goes out without video."""
        rec.flushed = True
        if not rec.packets or max(p.t for p in rec.packets) + 3 * half_frame(rec.packets) < rec.end_t:
            rec.truncated_end = reason
        _trim_end(rec)
        return rec

    def _session_at(self, t: float) -> _Session:
        """The session whose packets hold capture time `t`: the last one that began at or before it."""
        found = self._sessions[0]
        for session in self._sessions:
            if session.first_t is not None and session.first_t <= t:
                found = session
        return found

    def _session_packets(self, session: _Session) -> list[Packet]:
        """The packets held of `session`, in order."""
        later = [s.first_t for s in self._sessions if s.id > session.id and s.first_t is not None]
        lo, hi = session.first_t, (later[0] if later else None)
        if lo is None:
            return []
        return [p for p in self._packets if p.t >= lo and (hi is None or p.t < hi)]

    # --- detector side ------------------------------------------------------------------------

    def start_recording(self, key: str, start_t: float, end_t: float, at: float | None = None) -> Recording:
        """Open a recording from the last keyframe at or before `start_t`, within half a frame (or the
        oldest keyframe held, marked `truncated_start`), of the session that holds `at` (the read's capture
        time; None: the current session)."""
        with self._lock:
            session = self._sessions[-1] if at is None else self._session_at(at)
            rec = Recording(key, start_t, end_t, session=session.id)
            pkts = list(self._packets) if len(self._sessions) == 1 else self._session_packets(session)
            first_t = session.first_t
            # the last keyframe at or before the first frame shown (keyframes are in time order even with
            # B-frames); a keyframe half a frame after start_t is that frame, whatever the float rounding
            edge = start_t + half_frame(pkts)
            i = next((j for j in range(len(pkts) - 1, -1, -1) if pkts[j].keyframe and pkts[j].t < edge), -1)
            if i < 0:
                i = next((j for j, p in enumerate(pkts) if p.keyframe), len(pkts))
                if pkts:  # an empty ring: the video has not begun, nothing is lost yet
                    before_video = first_t is None or start_t < first_t
                    rec.truncated_start = "start_of_video" if before_video else "ring"
            rec.packets = pkts[i:]
            # detector lag may already have carried the ring past end_t: finish it now
            past = next((j for j, p in enumerate(rec.packets) if j and p.t >= end_t + REORDER_S), None)
            ready: list[Recording] = []
            if past is not None:
                rec.packets = rec.packets[:past]
                _trim_end(rec)
                self._complete.append(rec)
                ready = self._take_analysed()
            elif session is not self._sessions[-1]:
                # a read of a session that has ended: its packets are all here, and no more will come
                ready = [self._cut_short(rec, session.end_reason)]
            else:
                self._recordings[key] = rec
        self._hand_over(ready)
        return rec

    def extend(self, key: str, end_t: float) -> bool:
        """Push an open recording's end back; False if it has already finished."""
        with self._lock:
            rec = self._recordings.get(key)
            if rec is None:
                return False
            rec.end_t = max(rec.end_t, end_t)
            return True

    # --- introspection ------------------------------------------------------------------------

    def status(self) -> RingStatus:
        """What the ring holds, read under its lock (any thread)."""
        with self._lock:
            span = self._packets[-1].t - self._packets[0].t if self._packets else 0.0
            return RingStatus(len(self._packets), self._bytes, span, len(self._recordings) + len(self._complete))
