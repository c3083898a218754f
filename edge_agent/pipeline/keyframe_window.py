"""Which of a camera's packets are decoded for detection when the end of each keyframe interval may be skipped.

On a camera without B-frames every picture is a reference: to look at one picture the decoder must have
decoded every picture since the last keyframe, so decoding costs the same whether detection analyses one
frame in three or all of them, and it is most of what the agent costs. `detector.max_blind_s` trades part
of it away, as NVRs do when they decode keyframes only: after each keyframe the pictures up to
`interval - max_blind_s` are decoded (and picked for detection at `detector.rate_hz` as ever), and the rest
of the interval is not decoded at all, until the next keyframe. The ring keeps every packet, so clips are
whole; what is given up is detection's view of at most `max_blind_s` of each interval. A label in view
longer than that is still seen, in every interval it spans.

Only where skipping is safe and pays:
- a camera (packets dropped rather than waited for); a recorded file is analysed whole;
- keyframes at a steady interval: the last INTERVALS intervals agree within STEADY_S. A camera that
  stretches its interval in a still scene, or sends a keyframe every few minutes, is decoded whole, since
  the end of an interval cannot be known before it comes; after a keyframe later than expected, skipping
  waits for the interval to be steady again;
- packets in presentation order: with B-frames, a picture after a keyframe in decode order may reference
  one before it (an open GOP), which would have been skipped.
A new `max_blind_s` (a live reload) applies from the next keyframe.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge_agent.capture.media import Packet

INTERVALS = 3  # keyframe intervals that must agree before anything is skipped
STEADY_S = 0.07  # how closely: two frames at 30 fps (capture times of a pipe camera jitter by a few ms)


def steady_interval(keys: Sequence[float]) -> float | None:
    """The interval of keyframes at these capture times when it is steady (every gap within STEADY_S of the
    others; the shortest, to be safe), else None. `check` judges a camera's sample by the same rule."""
    gaps = [b - a for a, b in pairwise(keys)]
    return min(gaps) if gaps and max(gaps) - min(gaps) <= STEADY_S else None


def decoded_s(interval_s: float, max_blind_s: float) -> float | None:
    """Of a steady keyframe interval, the seconds decoded for detection; None: all of it (`check` says the same)."""
    decoded = interval_s - max_blind_s
    return decoded if max_blind_s > 0 and decoded > 0 else None


class KeyframeWindow:
    """Capture thread only: `decode(pkt)` for each packet of one source session, in arrival order."""

    def __init__(self) -> None:
        self._keys: deque[float] = deque(maxlen=INTERVALS + 1)
        self._until = float("inf")  # capture time after which this interval is not decoded
        self._skipping = False
        self._reordered = False
        self._last_pts: int | None = None

    def reset(self) -> None:
        """A new source session: its timeline and its stream start again."""
        self._keys.clear()
        self._until = float("inf")
        self._skipping = self._reordered = False
        self._last_pts = None

    def decode(self, pkt: Packet, max_blind_s: Callable[[], float]) -> bool:
        """Whether this packet goes to the decoder. A packet that does not is never needed by one that
        does: everything from the first skipped packet to the next keyframe is skipped. `max_blind_s()`
        is asked at keyframes only (0: decode everything until the next one)."""
        if pkt.pts is not None:
            if self._last_pts is not None and pkt.pts < self._last_pts:
                self._reordered = True  # B-frames: never skip in this session
            self._last_pts = pkt.pts
        if pkt.keyframe:
            if self._keys and pkt.t <= self._keys[-1]:
                self._keys.clear()  # time went back: a new timeline, its interval unknown
            self._keys.append(pkt.t)
            self._skipping = False
            self._until = self._window_end(max_blind_s())
            return True
        if self._skipping:
            return False
        if pkt.t > self._until and not self._reordered:
            self._skipping = True
            return False
        return True

    def _window_end(self, max_blind_s: float) -> float:
        if max_blind_s <= 0 or len(self._keys) <= INTERVALS:
            return float("inf")
        interval = steady_interval(self._keys)
        decoded = None if interval is None else decoded_s(interval, max_blind_s)
        return float("inf") if decoded is None else self._keys[-1] + decoded
