"""Capture clocks: a stream's timestamps to capture seconds `t`, and the wall-clock time of a capture.

Wall time. Every packet carries the moment of its capture on the monotonic clock (`Packet.mono`);
its wall-clock time is `wall_at(mono)`: the wall clock *now*, less the monotonic time elapsed since.
No wall-clock anchor is kept anywhere, so when NTP steps the clock (a Pi without a real-time clock
boots a year behind, then syncs), every time computed after the step is on the corrected clock,
including those of captures made before it.

Untimed streams (raw H.264 or MJPEG on a pipe).

A camera tool writing an elementary stream to a pipe gives frames but no timestamps, and the
pipe may hand them over in bursts (a loaded Pi, a buffered pipe: ten frames every 333 ms).
Stamping a frame when it arrives then gives clips whose frames are 0 ms apart and then 333 ms
apart. The camera itself runs at a steady rate, so `FrameClock` stamps frame n at
`n / fps + phase`: the phase follows the earliest arrivals (the frames that waited least in
the pipe) over the last couple of seconds, slewed by at most a tenth of a frame per frame,
so spacing stays within 10% of nominal and the clock never jumps. A pause far longer than
the usual burst (the camera stopped, frames lost) re-anchors to arrival instead.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from fractions import Fraction
from typing import Protocol

log = logging.getLogger(__name__)

# Frame rates cameras use; a measured rate this close to one of them is taken as that one.
_COMMON_FPS = (5.0, 7.5, 10.0, 12.0, 12.5, 15.0, 20.0, 23.976, 24.0, 25.0, 29.97, 30.0, 48.0, 50.0, 59.94,
               60.0, 90.0, 100.0, 120.0)
_SNAP = 0.03  # relative distance to a common rate
_SAME_READ_S = 0.005  # arrivals closer than this came out of one read of the pipe
# When a camera's PTS drifts this far from the arrival clock (camera reboot, RTP
# wrap), re-anchor to arrival: detection times must stay on the capture clock.
_REANCHOR_S = 1.0
# A file's timestamps going back further than any B-frame reordering: another recording joined on
# (concatenated files each start their timestamps again).
_REWIND_S = 1.0


class CaptureClock(Protocol):
    """What a session stamps its packets with, chosen once when it opens: `stamp` gives a packet's capture
    time from its PTS (if the stream has any) and its arrival; `lag` is how late those times run behind
    the real capture (subtracted from the wall-clock times in the metadata)."""

    lag: float

    def stamp(self, pts: int | None, arrival: float) -> float: ...


def wall_at(mono: float) -> float:
    """The wall-clock time of the moment `mono` (seconds on time.monotonic()), on the wall clock as it is now."""
    return time.time() - (time.monotonic() - mono)


class PtsClock:
    """Maps a stream's own PTS to capture seconds `t` (for streams that carry real timestamps).

    Media time (a recorded file, `arrival_anchored=False`): `t` is media time from the first PTS, so
    replay is reproducible at any speed.
    Arrival-anchored (a camera, `arrival_anchored=True`): `t` follows PTS (smooth, immune to network
    bursts) but is anchored to the monotonic clock and re-anchored on jumps, so the ring's seconds are
    real seconds.

    The anchor is the first packet's arrival, and that packet waited: FFmpeg reads a stretch of
    the stream while it probes it (0.7 s on an MPEG-TS pipe, measured), then hands it over at once.
    So `t` runs late by that much. `lag` is how late, learnt from causality: no frame arrives before
    it was captured, so a packet stamped later than it arrived shows the anchor's delay. `t` itself
    is left alone (moving it would jump it back, and clips only need it consistent); the wall-clock
    times in the metadata subtract `lag`.

    A file whose timestamps go back (two recordings concatenated) is re-anchored too: `t` carries on
    one frame (`frame_s`) after the latest time so far, so it stays media time within each recording
    and never runs backwards for the ring, the events and the frame picker; `rewinds` counts these and
    `last_rewind_s` says how far the timestamps went back (the first is logged).
    """

    def __init__(self, time_base: Fraction, arrival_anchored: bool, start_t: float = 0.0, frame_s: float = 0.0):
        self.time_base = time_base
        self.arrival_anchored = arrival_anchored
        self.start_t = start_t
        self.frame_s = frame_s
        self._anchor_pts: int | None = None
        self._anchor_t = 0.0
        self.last_t = start_t
        self.lag = 0.0  # seconds `t` runs behind capture (arrival-anchored only)
        self.rewinds = 0
        self.last_rewind_s = 0.0

    def stamp(self, pts: int | None, arrival: float) -> float:
        """`arrival`: seconds on the session clock (monotonic since the session opened, plus `start_t`)."""
        anchored = self.arrival_anchored
        if pts is None:
            t = arrival if anchored else self.last_t
        else:
            if self._anchor_pts is None:
                self._anchor_pts, self._anchor_t = pts, (arrival if anchored else self.start_t)
            t = self._anchor_t + float((pts - self._anchor_pts) * self.time_base)
            if anchored and abs(t - arrival) > _REANCHOR_S:
                self._anchor_pts, self._anchor_t, t = pts, arrival, arrival
                self.lag = 0.0  # a new anchor, with a delay of its own to learn
            elif not anchored and t < self.last_t - _REWIND_S:
                self.rewinds += 1
                self.last_rewind_s = self.last_t - t
                self._anchor_pts, self._anchor_t = pts, self.last_t + self.frame_s
                t = self._anchor_t
                if self.rewinds == 1:
                    log.warning("source timestamps went back %.3f s at t=%.3f (recordings joined in one file?): "
                                "the capture clock carries on from there", self.last_rewind_s, t)
        if anchored:
            self.lag = max(self.lag, t - arrival)
        self.last_t = max(self.last_t, t)
        return t


class FrameCountClock:
    """A recorded elementary stream (no timestamps of its own): frame n is at `start_t + n * frame_s`."""

    lag = 0.0

    def __init__(self, start_t: float, frame_s: float):
        self.start_t = start_t
        self.frame_s = frame_s
        self.n = 0

    def stamp(self, pts: int | None, arrival: float) -> float:
        t = self.start_t + self.n * self.frame_s
        self.n += 1
        return t


class ArrivalFrameClock:
    """An untimed camera stream (raw H.264 or MJPEG on a pipe): `FrameClock` stamps each frame from its
    arrival; the frames read ahead while the session opened are stamped together at the start (`prime`)."""

    lag = 0.0  # the stamps follow the earliest arrivals: they never run late

    def __init__(self, fps: float, read_ahead: list[float], start_t: float):
        self.frames = FrameClock(fps)
        self._primed = deque(self.frames.prime(read_ahead, floor=start_t))

    def stamp(self, pts: int | None, arrival: float) -> float:
        return self._primed.popleft() if self._primed else self.frames.stamp(arrival)


class FrameClock:
    """Not thread-safe: one per source session, called by the reading thread.

    `window_s` is how far back the earliest arrival is looked for (longer than any regular burst
    period); `slew` bounds the correction per frame as a fraction of the frame time; `gap_frames`
    is how many frames of silence beyond the usual burst spread count as a real gap.
    """

    def __init__(self, fps: float, *, window_s: float = 2.0, slew: float = 0.1, gap_frames: float = 5.0):
        if fps <= 0:
            raise ValueError("fps must be positive")
        self.frame_s = 1.0 / fps
        self.window_s = window_s
        self.slew = slew
        self.gap_frames = gap_frames
        self.n = 0  # frames stamped since the anchor
        self.phase: float | None = None  # stamp of frame n is n * frame_s + phase
        self.reanchors = 0
        self._window: deque[tuple[float, float]] = deque()  # (arrival, arrival - n * frame_s), minimum kept
        self._spread = 0.0  # recent max - min of arrival phases: how bursty the pipe is
        self.last_t: float | None = None

    def stamp(self, arrival: float) -> float:
        """The capture time of the next frame, which arrived at `arrival` (seconds, monotonic)."""
        if self.phase is None:
            return self._anchor(arrival)
        n = self.n + 1
        observed = arrival - n * self.frame_s
        expected = self.phase  # where the frame would land without correction
        if observed - expected > self.gap_frames * self.frame_s + self._spread:
            self.reanchors += 1
            return self._anchor(arrival)
        while self._window and self._window[0][0] < arrival - self.window_s:
            self._window.popleft()
        # a sliding minimum: older entries that are not lower can never be the minimum again
        while self._window and self._window[-1][1] >= observed:
            self._window.pop()
        self._window.append((arrival, observed))
        target = self._window[0][1]
        self._spread = max(self._spread * 0.995, observed - target)
        step = self.slew * self.frame_s
        self.phase = expected + max(-step, min(step, target - expected))
        self.n = n
        t = n * self.frame_s + self.phase
        self.last_t = t
        return t

    def prime(self, arrivals: list[float], floor: float | None = None) -> list[float]:
        """Stamps for the first frames, read ahead before any was handed on: the phase is then the
        earliest arrival over all of them at once, so the frames FFmpeg buffered while probing the
        stream (captured before they came out together) are stamped back in their own time, and the
        clock starts where it will stay instead of slewing there. `floor`: no stamp earlier."""
        if not arrivals:
            return []
        phases = [a - j * self.frame_s for j, a in enumerate(arrivals)]
        self.phase = min(phases) if floor is None else max(min(phases), floor)
        self._spread = max(phases) - min(phases)
        self.n = len(arrivals) - 1
        self._window.clear()
        for a, ph in zip(arrivals, phases, strict=True):
            while self._window and self._window[-1][1] >= ph:
                self._window.pop()
            self._window.append((a, ph))
        stamps = [j * self.frame_s + self.phase for j in range(len(arrivals))]
        self.last_t = stamps[-1]
        return stamps

    def _anchor(self, arrival: float) -> float:
        self.n = 0
        self.phase = arrival
        self._window.clear()
        self._window.append((arrival, arrival))
        if self.last_t is not None and arrival <= self.last_t:
            arrival = self.phase = self.last_t + self.frame_s  # stamps never go back
        self.last_t = arrival
        return arrival


def measure_fps(arrivals: list[float]) -> float | None:
    """Frames per second from arrival times, robust to bursts: frames that arrive together are
    one read of the pipe, and the frames of each read were captured since the read before.
    So the rate is the frames after the first read up to the last complete one, over the time
    between those reads. None when fewer than three reads were seen."""
    reads: list[tuple[float, int]] = []  # (arrival of the read, frames in it)
    for a in arrivals:
        if reads and a - reads[-1][0] < _SAME_READ_S:
            reads[-1] = (reads[-1][0], reads[-1][1] + 1)
        else:
            reads.append((a, 1))
    if len(reads) < 3:
        return None
    # the last read may still be incomplete (more of it was on its way): leave it out
    complete = reads[:-1]
    span = complete[-1][0] - complete[0][0]
    if span <= 0:
        return None
    return snap_fps(sum(k for _, k in complete[1:]) / span)


def snap_fps(fps: float) -> float:
    """A measured rate within 3% of a common camera rate becomes that rate."""
    best = min(_COMMON_FPS, key=lambda r: abs(r - fps) / r)
    return best if abs(best - fps) / best <= _SNAP else round(fps, 3)
