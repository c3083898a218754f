"""The capture stage: opens the source, reads it, reopens it.

It owns everything about keeping video coming: the sessions (replay files in turn, or the
configured source for ever), reopening with backoff when a camera fails or stalls, the stall
watch, and where each session's capture clock starts (where the one before ended). When a session
opens, `on_session` says where its output goes (a `Route`: packet consumers, and a consumer for a
camera's own pictures); each packet is offered to those in turn, and none of them may make the
capture thread wait on anything slow when the source is a camera. When a camera's session ends (it
stalled, failed or ended) the route's `ended` hears it at once: the camera may stay away for long.

A camera that is away (it cannot be opened, or its session ended) is retried for ever with back-off,
and the log says so once per change: one line when it goes away (or its cause changes), one when it is
back; the retries between are debug lines. `CaptureStatus` has the state and since when it is away.
Every wait of the capture thread is bounded (an open, a read, a back-off; const.CAPTURE_SLACK_S), and
`CaptureStatus.overdue_s` says when one outlives its bound: a thread stuck where no timeout reaches,
which the daemon answers by no longer telling systemd's watchdog it is alive.

A stop interrupts the session at once where the source can be interrupted (a pipe, a file, a back-off).
PyAV has no interrupt-now for FFmpeg's own network reads (only their timeout), so a stop that finds
capture still blocked in one lets it go (`let_go`): from then on it hands nothing to anyone, and the
stop ends its consumers without it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_agent import const
from edge_agent.capture.consumer import Route
from edge_agent.capture.media import CameraPicture, Packet
from edge_agent.capture.session import Session, SessionEnd, SourceError
from edge_agent.capture.source import make_source
from edge_agent.config import Config, SourceConfig
from edge_agent.config.live import PendingConfig
from edge_agent.metrics import Metrics
from edge_agent.stage import Failure, FailureBox
from edge_agent.thread_names import name_os_thread

log = logging.getLogger("edge_agent.pipeline")

CHECK_HINT = "run `edge-agent check` to test the camera"


@dataclass(frozen=True)
class CaptureStatus:
    camera: bool  # a camera (reopened for ever), not recorded files played to their end
    frames: int
    sessions: int
    source_error: str | None
    last_frame_age_s: float | None  # None before the first frame
    fps: float | None  # the source's own frame rate
    describe: str | None
    state: str = "starting"  # starting (no frame yet), up (frames flowing), away (being reopened), ended
    away_s: float | None = None  # away: since its last frame (or since capture started, if it never gave one)
    reopen_attempts: int = 0  # away: attempts to reopen it so far
    overdue_s: float = 0.0  # how far the capture thread is past the bound of its current wait; > 0: stuck
    doing: str = "starting"  # what the capture thread is doing: opening, reading, closing, waiting, ended
    config: Config | None = None  # the config the capture thread runs on (a reload's, once it took it)


class CaptureSupervisor:
    """Runs in the capture thread (`run`); `interrupt`, `restart`, `stop` and `let_go` come from other threads."""

    name = "capture"

    def __init__(self, cfg: Config, metrics: Metrics, failures: FailureBox,
                 on_session: Callable[[Session, int], Route], videos: Sequence[str] = ()):
        # the config the capture thread runs on, written by that thread alone: a reload is offered to
        # `_pending` and taken at the thread's next packet or session. Sessions open with its source
        # settings, clip.encoders (raw cameras are encoded as they arrive) and detector.cooldown_s (the gap
        # between replayed files); the stall watch reads source.stall_s on every tick (`_stall_s`)
        self.config = cfg
        self._pending = PendingConfig()
        self.metrics = metrics
        self.failures = failures
        self.videos = list(videos)
        self._on_session = on_session
        self._stop = threading.Event()
        self._restart = threading.Event()
        self._nudge = threading.Event()  # a stop or a source reload: a reopen's back-off ends at once
        self._lock = threading.Lock()
        self._source: Session | None = None
        # held while one packet (or a session's start or end) is handed on; `let_go` takes it once
        self._gate = threading.Lock()
        self._let_go = False
        self.ready = threading.Event()  # the source has delivered a frame
        self.frames = 0
        self.sessions = 0
        self.source_error: str | None = None
        self.last_frame_mono: float | None = None
        self._fps: float | None = None
        self._describe: str | None = None
        # written by the capture thread only
        self._started = time.monotonic()
        self._state = "starting"
        self._away_since: float | None = None
        self._attempts = 0
        self._cause: str | None = None  # why it is away, as last logged
        self._pending_open: str | None = None  # a session opened while away: said once its first frame comes
        self._doing: tuple[str, float, float] = ("starting", self._started, 0.0)  # (step, since, bound_s)

    # --- control (any thread) -----------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()
        self._nudge.set()
        self._interrupt()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def let_go(self, timeout: float) -> bool:
        """The stop's thread, once `stop()` did not end capture in time: it is blocked where no interrupt
        reaches (FFmpeg's own network read or open, bounded by its timeout only; a camera command slow to
        exit). From here on it hands nothing on (no packet, no session start or end), so its consumers can
        be ended without it; what blocks it ends by itself. False if a hand-over in progress did not finish
        in `timeout` (a BLOCK consumer full)."""
        if not self._gate.acquire(timeout=timeout):
            return False
        self._let_go = True
        self._gate.release()
        return True

    @property
    def cfg(self) -> SourceConfig:
        return self.config.source

    def apply(self, new: Config, changed: frozenset[str]) -> None:
        """A reloaded config (live part, any thread): offered to the capture thread, which takes it at its
        next packet or session. A changed source setting other than `stall_s` also ends the current session,
        and the next opens with it; `stall_s` alone applies to the running session (no reopen, no clip cut
        short); the rest applies at the next session."""
        self._pending.offer(new, changed)
        if self.config.source.model_copy(update={"stall_s": new.source.stall_s}) != new.source:
            self._restart.set()
            self._nudge.set()  # a camera away, waiting to retry: the new settings are tried now
            self._interrupt()

    def _take_config(self) -> None:
        """Capture thread: the reloaded config, if one was offered."""
        taken = self._pending.take()
        if taken is not None:
            self.config = taken[0]

    def _interrupt(self) -> None:
        with self._lock:
            if self._source is not None:
                self._source.interrupt()

    def status(self) -> CaptureStatus:
        now = time.monotonic()
        last = self.last_frame_mono
        away_since = self._away_since
        return CaptureStatus(
            camera=self.cfg.kind != "file" and not self.videos, frames=self.frames, sessions=self.sessions,
            source_error=self.source_error, last_frame_age_s=None if last is None else now - last,
            fps=self._fps, describe=self._describe, state=self._state,
            away_s=None if away_since is None else now - away_since, reopen_attempts=self._attempts,
            overdue_s=self._overdue(now), doing=self._doing[0], config=self.config)

    def _overdue(self, now: float) -> float:
        """Seconds the capture thread is past the bound of what it is doing (0 while on time). A read's
        bound runs from the last frame: a stall ends it (source.stall_s), and so does FFmpeg's timeout."""
        step, since, bound = self._doing
        if step == "ended":
            return 0.0
        if step == "reading":
            last = self.last_frame_mono
            since = max(since, last) if last is not None else since
            bound = max(self.cfg.stall_s, self.cfg.open_timeout_s)
        return max(0.0, now - since - bound - const.CAPTURE_SLACK_S)

    # --- the thread ---------------------------------------------------------------------------

    def _sessions(self) -> Iterator[Session]:
        if self.videos:
            for path in self.videos:
                self._take_config()
                yield make_source(self.cfg, path, encoders=self.config.clip.encoders)
            return
        while not self._stop.is_set():
            self._take_config()
            cfg = self.cfg
            yield make_source(cfg, encoders=self.config.clip.encoders)
            if cfg.kind == "file" and not cfg.loop and not self._restart.is_set():
                return

    def _step(self, step: str, bound_s: float) -> None:
        """What the capture thread does now, and how long it may take (a tuple replaced whole)."""
        self._doing = (step, time.monotonic(), bound_s)

    def _wait(self, seconds: float) -> bool:
        """A reopen's back-off, ended early by a stop or a source reload; True if a stop came."""
        self._step("waiting", seconds)
        self._nudge.wait(seconds)
        self._nudge.clear()
        return self._stop.is_set()

    def _next_backoff(self, backoff: float) -> float:
        """The back-off after a failed attempt: doubled up to the cap, or from the start again for a source
        the technician just changed (a reload is a new camera, not one more try of the old one)."""
        if self._restart.is_set():
            return const.REOPEN_BACKOFF_START_S
        return min(backoff * 2, const.REOPEN_BACKOFF_CAP_S)

    def run(self) -> None:
        try:
            self._run()
        finally:
            self._step("ended", 0.0)
            if not self._stop.is_set():
                self._state = "ended"

    def _run(self) -> None:
        backoff = const.REOPEN_BACKOFF_START_S
        start_t = 0.0
        for src in self._sessions():
            if self._stop.is_set():
                break
            self._restart.clear()
            with self._lock:
                self._source = src
            # FFmpeg's open, its probing and an untimed pipe's read-ahead each wait open_timeout_s at most
            self._step("opening", 3 * src.cfg.open_timeout_s)
            try:
                src.open(start_t)
            except SourceError as exc:
                with self._lock:
                    self._source = None
                if self._stop.is_set():
                    break
                self.source_error = str(exc)
                self.metrics.source_errors.inc()
                if self.videos:
                    log.error("replay: %s", exc)
                    continue
                if not src.camera:
                    missing = not Path(str(src.path)).exists()
                    self.failures.set(Failure(self.name, str(exc), const.EXIT_NOINPUT if missing
                                              else const.EXIT_DATAERR))
                    log.error("source: %s (source.path)", exc)
                    break
                self._away(str(exc), f"source unavailable, retrying in {backoff:.0f} s (doubling up to "
                           f"{const.REOPEN_BACKOFF_CAP_S:.0f} s) until it answers: {exc}; {CHECK_HINT}", backoff)
                self.metrics.source_restarts.inc()
                if self._wait(backoff):
                    break
                backoff = self._next_backoff(backoff)
                continue
            route = self._opened(src)
            if route is None:  # stopped, and let go, while it opened
                with self._lock:
                    self._source = None
                src.close()
                break
            ended, stalled = self._read(src, route)
            if ended.delivered:
                backoff = const.REOPEN_BACKOFF_START_S
                self.source_error = None
            if ended.error is not None:
                self.source_error = str(ended.error)
            # files played back to back: a gap longer than the cooldown between them, so a CID in two
            # recordings makes two events
            start_t = ended.end_t + (self.config.detector.cooldown_s + 1 if not src.camera else 0)
            with self._lock:
                self._source = None
            self._step("closing", 0.0)
            src.close()
            if not src.camera or self._stop.is_set():
                continue
            if self._restart.is_set():
                log.info("source restarting with the reloaded settings source=%s", src.describe)
                continue
            self.metrics.source_restarts.inc()
            if stalled:  # the stall watch said it as it went away; said here if the cause changed while away
                self._away("stalled", self._stall_line(src) if self._state == "away" else None, backoff)
            elif ended.error is not None:
                self._away(str(ended.error), f"source read failed, reopening in {backoff:.0f} s: {ended.error}",
                           backoff)
            else:
                self._away("ended", f"source ended, reopening in {backoff:.0f} s source={src.describe}", backoff)
            if self._wait(backoff):
                break
            if not ended.delivered:
                backoff = self._next_backoff(backoff)

    def _opened(self, src: Session) -> Route | None:
        """A session is open: its route, from the wiring (None once let go: nothing may be handed on)."""
        info = src.info
        assert info is not None
        opened = (f"source open kind={src.cfg.kind} source={src.describe} codec={info.codec} "
                  f"size={info.width}x{info.height} fps={f'{info.fps:.2f}' if info.fps else '?'}")
        with self._gate:
            if self._let_go:
                return None
            self.sessions += 1
            self._fps, self._describe = info.fps, src.describe
            route = self._on_session(src, self.sessions)
        if self._state == "away":  # said with the first frame: an open that gives none is one more attempt
            self._pending_open = opened
            log.debug("%s", opened)
        else:
            log.info("%s", opened)
        return route

    def _away(self, cause: str, line: str | None, backoff: float) -> None:
        """Capture thread: the camera is away and is retried in `backoff` s. Logged (`line`; None: said
        already) when it goes away or the cause changes; each retry after that is a debug line."""
        if self._state != "away":
            up = self._state == "up" and self.last_frame_mono is not None
            self._away_since = self.last_frame_mono if up else self._started
            self._state = "away"
            self._attempts = 0
            self._cause = None
        self._attempts += 1
        if cause != self._cause:
            self._cause = cause
            if line is not None:
                log.warning("%s", line)
        else:
            log.debug("source still away (attempt %d), retrying in %.0f s: %s", self._attempts, backoff, cause)

    def _came_up(self) -> None:
        """Capture thread, at a session's first frame: the camera is up (back, if it was away)."""
        if self._state == "away" and self._away_since is not None:
            log.info("source back after %.1f s away (%d attempt%s); %s", time.monotonic() - self._away_since,
                     self._attempts, "" if self._attempts == 1 else "s", self._pending_open or "")
        self._state = "up"
        self._away_since = None
        self._attempts = 0
        self._cause = self._pending_open = None

    def _read(self, src: Session, route: Route) -> tuple[SessionEnd, bool]:
        """One session's packets to the route's consumers, until it ends, fails, or a stop or restart.
        Returns how it ended and whether the stall watch ended it."""
        consumers = tuple(route.packets)
        pictures = route.pictures
        ready = self.ready
        metrics = self.metrics
        gate = self._gate

        def deliver(item: Packet | CameraPicture) -> bool:
            self._take_config()  # source.stall_s applies to the running session
            with gate:
                if self._let_go:
                    return False
                if isinstance(item, Packet):
                    self.frames += 1
                    self.last_frame_mono = time.monotonic()
                    metrics.frames.inc()
                    for consumer in consumers:
                        consumer.offer(item)
                elif pictures is not None:  # a camera's own picture of a frame already counted
                    pictures.offer_picture(item)
            if self._state != "up":
                self._came_up()
            if not ready.is_set():
                ready.set()
            return not (self._stop.is_set() or self._restart.is_set())

        done = threading.Event()
        stalled = threading.Event()
        self._step("reading", 0.0)
        if src.camera:
            threading.Thread(target=self._watch_stall, args=(src, done, stalled), daemon=True,
                             name="stall-watch").start()
        try:
            ended = src.read(deliver)
        finally:
            done.set()
        if route.ended is not None and not self._stop.is_set():  # a stop ends the consumers itself
            with gate:
                if not self._let_go:
                    route.ended()
        return ended, stalled.is_set()

    def _stall_s(self) -> float:
        """source.stall_s as the stall watch reads it on every tick: a reload offered and not taken yet
        counts too, since no frame may come for the capture thread to take it at (a stall)."""
        return (self._pending.peek() or self.config).source.stall_s

    def _stall_line(self, src: Session) -> str:
        return f"source stalled: no frame for {self._stall_s():.0f} s, reopening with back-off source={src.describe}"

    def _watch_stall(self, src: Session, done: threading.Event, stalled: threading.Event) -> None:
        """No frame for `source.stall_s`: interrupt the read so the session ends and is reopened."""
        name_os_thread("stall-watch")
        opened = time.monotonic()
        while not done.wait(min(1.0, self._stall_s() / 4)) and not self._stop.is_set():
            last = max(self.last_frame_mono or opened, opened)
            if time.monotonic() - last > self._stall_s():
                # said as the camera goes away; a session reopened while away that stalls again is a retry
                if self._state != "away":
                    log.warning("%s", self._stall_line(src))
                self.metrics.source_stalls.inc()
                stalled.set()
                src.interrupt()
                return
