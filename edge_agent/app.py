"""The composition root: the one place that builds the agent's parts, in a fixed order, and stops
them in reverse (Frigate's `app.py` does the same with its init and start steps).

    config → spool → uploader → pipeline → service parts (HTTP, config watcher)

It is also the one way a reloaded config reaches the parts: each part that takes live keys registers
here for the keys it uses (`take_live`), and `reconfigure` hands every part its share of a change,
one reload at a time whatever asked for it (the config watcher, SIGHUP).

Every command takes its parts from here: `run` all of them, `replay` a pipeline into the spool or a
folder, `spool flush` the spool and an uploader, `check`, `snapshot` and `tune` the source, the
detector and the CID rule the daemon itself uses. No command builds a decoder, a detector or an
uploader of its own, so what they show is what the daemon does.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from edge_agent import __version__
from edge_agent.capture.session import Session
from edge_agent.capture.source import make_source
from edge_agent.config import Config
from edge_agent.config.live import LivePart, classify_changes, covers
from edge_agent.delivery.cid import CidValidator
from edge_agent.delivery.sinks import ClipSink
from edge_agent.delivery.spool import Spool
from edge_agent.delivery.uploader import ResultCallback, Uploader
from edge_agent.metrics import Metrics
from edge_agent.pipeline.events import EventLog, EventSnapshot
from edge_agent.pipeline.qr_detector import Detector
from edge_agent.pipeline.wiring import Pipeline

log = logging.getLogger("edge_agent.app")

# What each part may take of the stop budget, at least.
MIN_STOP_S = 0.5


@dataclass(frozen=True)
class LiveTaker:
    """A part registered for live changes of `keys` (dotted prefixes)."""

    name: str
    keys: tuple[str, ...]
    part: LivePart


@dataclass(frozen=True)
class Reconfigured:
    """What a reload changed: the keys the schema marks live, and the restart-only ones."""

    old: Config
    new: Config
    live: list[str]
    restart: list[str]


class Agent:
    """Builds parts on demand, each once, remembering the order; `close()` stops them in reverse."""

    def __init__(self, cfg: Config, metrics: Metrics | None = None):
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        self._spool: Spool | None = None
        self._uploader: Uploader | None = None
        self._pipeline: Pipeline | None = None
        self._stops: list[tuple[str, Callable[[float], Any]]] = []
        self._takers: list[LiveTaker] = []
        self._reload_lock = threading.RLock()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_part(self, name: str, stop: Callable[[float], Any]) -> None:
        """A part built elsewhere (the service's HTTP server, the config watcher) joins the order;
        `stop(seconds)` gets what is left of the budget."""
        self._stops.append((name, stop))

    # --- live configuration ---------------------------------------------------------------------

    def take_live(self, name: str, keys: Sequence[str], part: LivePart) -> None:
        """`part` follows changes of `keys` (dotted prefixes of the schema's keys) from now on."""
        with self._reload_lock:
            self._takers.append(LiveTaker(name, tuple(keys), part))

    def live_takers(self) -> list[LiveTaker]:
        with self._reload_lock:
            return list(self._takers)

    def takers_of(self, key: str) -> list[str]:
        """The names of the parts registered for `key`."""
        return [t.name for t in self.live_takers() if covers(t.keys, key)]

    def refuse(self, then: Callable[[], None]) -> None:
        """A reload whose config does not load: nothing changes, and `then` (the caller's bookkeeping)
        runs under the reload lock, in order with the reloads that did apply."""
        with self._one_reload():
            then()

    @contextlib.contextmanager
    def _one_reload(self) -> Iterator[None]:
        """The reload lock. A trigger that finds another reload in progress says so before it waits:
        the journal then tells why a reload's line came late (and a test knows it is waiting)."""
        if not self._reload_lock.acquire(blocking=False):
            log.info("reload waits for the one in progress")
            self._reload_lock.acquire()
        try:
            yield
        finally:
            self._reload_lock.release()

    def reconfigure(self, new: Config, then: Callable[[Reconfigured], None] | None = None) -> Reconfigured:
        """Hand each registered part the changed keys it registered for (restart-only ones too: a
        part that can apply one in place, the capture's source, does; the others keep theirs), then
        `then(result)` (the caller's bookkeeping), all under one lock: two triggers at once apply one
        after the other, never interleaved."""
        with self._one_reload():
            old = self.cfg
            live, restart = classify_changes(old, new)
            changed = live + restart
            for taker in self._takers:
                mine = frozenset(k for k in changed if covers(taker.keys, k))
                if mine:
                    taker.part.apply(new, mine)
            self.cfg = new
            result = Reconfigured(old, new, live, restart)
            if then is not None:
                then(result)
            return result

    # --- the parts, in build order --------------------------------------------------------------

    def spool(self, progress: Callable[[int, int], object] | None = None) -> Spool:
        """The spool as its owner (recovery runs here, `progress(done, of)` hearing how far a long one is);
        SpoolBusy when another process owns it."""
        if self._spool is None:
            self._spool = Spool(self.cfg.spool, self.metrics, progress=progress)
            self.take_live("spool", ["spool"], self._spool)
            self.add_part("spool", lambda _s: self._spool.close() if self._spool else None)
        return self._spool

    def uploader(self, on_result: ResultCallback | None = None, *, thread: bool = True) -> Uploader:
        if self._uploader is None:
            self._uploader = Uploader(self.spool(), self.cfg.upload, self.metrics, __version__, on_result=on_result)
            self.take_live("uploader", ["upload"], self._uploader)
            if thread:
                self._uploader.start()
            self.add_part("uploader", lambda s: self._uploader.stop(timeout=s) if self._uploader else None)
        return self._uploader

    def pipeline(self, sink: ClipSink | None = None, *, videos: Sequence[str] | None = None,
                 on_event: Callable[[EventSnapshot], None] | None = None,
                 on_noread: Callable[[Any], None] | None = None, events: EventLog | None = None) -> Pipeline:
        """The pipeline into `sink` (default: the spool). Stopping it cuts open recordings short and
        hands them to the sink, so it stops before the uploader and the spool. `events`: the log its
        events go to (default: a new one keeping the last few)."""
        if self._pipeline is None:
            self._pipeline = Pipeline(self.cfg, sink if sink is not None else self.spool(), videos=videos,
                                      metrics=self.metrics, on_event=on_event, on_noread=on_noread,
                                      events=events)
            for name, keys, part in self._pipeline.live_parts():
                self.take_live(name, keys, part)
            self.add_part("pipeline", self._stop_pipeline)
        return self._pipeline

    def _stop_pipeline(self, seconds: float) -> None:
        assert self._pipeline is not None
        if not self._pipeline.stop(timeout=seconds):
            log.warning("pipeline did not stop in %.1f s; clips not made by then go out without video (their reads "
                        "are kept)", seconds)

    # --- what the commands share with the pipeline ----------------------------------------------

    def detector(self) -> Detector:
        """The daemon's detector: same decoder, options, region of interest and downscale."""
        return Detector(self.cfg.detector)

    def validator(self) -> CidValidator:
        """The one CID rule."""
        return CidValidator(self.cfg.detector.cid_pattern, self.cfg.detector.cid_max_length)

    def source(self) -> Session:
        """The configured source, not opened; raw cameras are encoded with clip.encoders as they arrive."""
        return make_source(self.cfg.source, encoders=self.cfg.clip.encoders)

    # --- stopping -------------------------------------------------------------------------------

    def close(self, budget_s: float = 15.0) -> None:
        """Stop every part in the reverse of the order it was built, within `budget_s` overall."""
        deadline = time.monotonic() + budget_s
        while self._stops:
            name, stop = self._stops.pop()
            left = max(MIN_STOP_S, deadline - time.monotonic())
            try:
                stop(left)
            except Exception:  # the parts after it must still stop
                log.exception("stopping %s failed", name)
