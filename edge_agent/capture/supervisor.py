"""The capture stage: opens the source, reads it, reopens it.

It owns everything about keeping video coming: the sessions (replay files in turn, or the
configured source for ever), reopening with backoff when a camera fails or stalls, the stall
watch, and where each session's capture clock starts (where the one before ended). When a session
opens, `on_session` says where its output goes (a `Route`: packet consumers, and a consumer for a
camera's own pictures); each packet is offered to those in turn, and none of them may make the
capture thread wait on anything slow when the source is a camera.
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
from edge_agent.capture.source import Session, SessionEnd, SourceError, make_source
from edge_agent.config import Config, SourceConfig
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


class CaptureSupervisor:
    """Runs in the capture thread (`run`); `interrupt`, `restart` and `stop` come from other threads."""

    name = "capture"

    def __init__(self, cfg: Config, metrics: Metrics, failures: FailureBox,
                 on_session: Callable[[Session, int], Route], videos: Sequence[str] = ()):
        # the whole config, replaced (never edited) by a reload: sessions open with its source settings,
        # clip.encoders (raw cameras are encoded as they arrive) and detector.cooldown_s (the gap between
        # replayed files); the stall watch reads source.stall_s from it on every tick
        self.config = cfg
        self.metrics = metrics
        self.failures = failures
        self.videos = list(videos)
        self._on_session = on_session
        self._stop = threading.Event()
        self._restart = threading.Event()
        self._lock = threading.Lock()
        self._source: Session | None = None
        self._alive = False
        self.ready = threading.Event()  # the source has delivered a frame
        self.frames = 0
        self.sessions = 0
        self.source_error: str | None = None
        self.last_frame_mono: float | None = None
        self._fps: float | None = None
        self._describe: str | None = None

    # --- control (any thread) -----------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()
        self._interrupt()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def cfg(self) -> SourceConfig:
        return self.config.source

    def apply(self, new: Config, changed: frozenset[str]) -> None:
        """A reloaded config (live part, any thread). A changed source setting other than `stall_s`
        ends the current session and the next opens with it; `stall_s` alone applies to the running
        session (no reopen, no clip cut short); the rest applies at the next session."""
        old, self.config = self.config, new
        if old.source.model_copy(update={"stall_s": new.source.stall_s}) != new.source:
            self._restart.set()
            self._interrupt()

    def _interrupt(self) -> None:
        with self._lock:
            if self._source is not None:
                self._source.interrupt()

    def status(self) -> CaptureStatus:
        last = self.last_frame_mono
        return CaptureStatus(
            camera=self.cfg.kind != "file" and not self.videos, frames=self.frames, sessions=self.sessions,
            source_error=self.source_error, last_frame_age_s=None if last is None else time.monotonic() - last,
            fps=self._fps, describe=self._describe)

    # --- the thread ---------------------------------------------------------------------------

    def _sessions(self) -> Iterator[Session]:
        if self.videos:
            for path in self.videos:
                yield make_source(self.cfg, path, encoders=self.config.clip.encoders)
            return
        while not self._stop.is_set():
            cfg = self.cfg
            yield make_source(cfg, encoders=self.config.clip.encoders)
            if cfg.kind == "file" and not cfg.loop and not self._restart.is_set():
                return

    def run(self) -> None:
        backoff = const.REOPEN_BACKOFF_START_S
        start_t = 0.0
        for src in self._sessions():
            if self._stop.is_set():
                break
            self._restart.clear()
            with self._lock:
                self._source = src
            try:
                src.open(start_t)
            except SourceError as exc:
                with self._lock:
                    self._source = None
                self.source_error = str(exc)
                self.metrics.inc("edge_agent_source_errors_total")
                if self.videos:
                    log.error("replay: %s", exc)
                    continue
                if not src.camera:
                    missing = not Path(str(src.path)).exists()
                    self.failures.set(Failure(self.name, str(exc), const.EXIT_NOINPUT if missing
                                              else const.EXIT_DATAERR))
                    log.error("source: %s (source.path)", exc)
                    break
                log.warning("source unavailable, retrying in %.0f s: %s; %s", backoff, exc, CHECK_HINT)
                self.metrics.inc("edge_agent_source_restarts_total")
                if self._stop.wait(backoff):
                    break
                backoff = min(backoff * 2, const.REOPEN_BACKOFF_CAP_S)
                continue
            self.sessions += 1
            info = src.info
            assert info is not None
            self._fps, self._describe = info.fps, src.describe
            route = self._on_session(src, self.sessions)
            log.info("source open kind=%s source=%s codec=%s size=%dx%d fps=%s", src.cfg.kind, src.describe,
                     info.codec, info.width, info.height, f"{info.fps:.2f}" if info.fps else "?")
            ended = self._read(src, route)
            if ended.delivered:
                backoff = const.REOPEN_BACKOFF_START_S
                self.source_error = None
            # files played back to back: a gap longer than the cooldown between them, so a CID in two
            # recordings makes two events
            start_t = ended.end_t + (self.config.detector.cooldown_s + 1 if not src.camera else 0)
            with self._lock:
                self._source = None
            src.close()
            if not src.camera or self._stop.is_set():
                continue
            if self._restart.is_set():
                log.info("source restarting with the reloaded settings source=%s", src.describe)
                continue
            self.metrics.inc("edge_agent_source_restarts_total")
            log.warning("source ended or stalled, reopening in %.0f s source=%s", backoff, src.describe)
            if self._stop.wait(backoff):
                break
            if not ended.delivered:
                backoff = min(backoff * 2, const.REOPEN_BACKOFF_CAP_S)

    def _read(self, src: Session, route: Route) -> SessionEnd:
        """One session's packets to the route's consumers, until it ends, fails, or a stop or restart."""
        consumers = tuple(route.packets)
        pictures = route.pictures
        ready = self.ready
        metrics = self.metrics

        def deliver(item: Packet | CameraPicture) -> bool:
            if isinstance(item, Packet):
                self.frames += 1
                self.last_frame_mono = time.monotonic()
                metrics.inc("edge_agent_frames_total")
                for consumer in consumers:
                    consumer.offer(item)
            elif pictures is not None:  # a camera's own picture of a frame already counted
                pictures.offer_picture(item)
            if not ready.is_set():
                ready.set()
            return not (self._stop.is_set() or self._restart.is_set())

        self._alive = True
        if src.camera:
            threading.Thread(target=self._watch_stall, args=(src,), daemon=True, name="stall-watch").start()
        try:
            ended = src.read(deliver)
        finally:
            self._alive = False
        if ended.error is not None:
            self.source_error = str(ended.error)
            log.warning("source read failed: %s", ended.error)
        return ended

    def _watch_stall(self, src: Session) -> None:
        """No frame for `source.stall_s`: interrupt the read so the session ends and is reopened."""
        name_os_thread("stall-watch")
        opened = time.monotonic()
        while self._alive and not self._stop.wait(min(1.0, self.cfg.stall_s / 4)):
            last = max(self.last_frame_mono or opened, opened)
            stall_s = self.cfg.stall_s  # read on every tick: a reload may change it
            if time.monotonic() - last > stall_s:
                log.warning("source stalled: no frame for %.0f s source=%s", stall_s, src.describe)
                self.metrics.inc("edge_agent_source_stalls_total")
                src.interrupt()
                return
