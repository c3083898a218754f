"""The composition root: the one place that builds the agent's parts, in a fixed order, and stops
them in reverse (Frigate's `app.py` does the same with its init and start steps).

    config → spool → uploader → pipeline → service parts (HTTP, config watcher)

Every command takes its parts from here: `run` all of them, `replay` a pipeline into the spool or a
folder, `spool flush` the spool and an uploader, `check`, `snapshot` and `tune` the source, the
detector and the CID rule the daemon itself uses. No command builds a decoder, a detector or an
uploader of its own, so what they show is what the daemon does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from edge_agent import __version__
from edge_agent.capture.source import AvSource, make_source
from edge_agent.config import Config
from edge_agent.delivery.cid import CidValidator
from edge_agent.delivery.sinks import ClipSink
from edge_agent.delivery.spool import Spool
from edge_agent.delivery.uploader import ResultCallback, Uploader
from edge_agent.metrics import Metrics
from edge_agent.pipeline.detector import Detector
from edge_agent.pipeline.events import EventLog, EventSnapshot
from edge_agent.pipeline.wiring import Pipeline

log = logging.getLogger("edge_agent.app")

# What each part may take of the stop budget, at least.
MIN_STOP_S = 0.5


class Agent:
    """Builds parts on demand, each once, remembering the order; `close()` stops them in reverse."""

    def __init__(self, cfg: Config, metrics: Metrics | None = None):
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        self._spool: Spool | None = None
        self._uploader: Uploader | None = None
        self._pipeline: Pipeline | None = None
        self._stops: list[tuple[str, Callable[[float], Any]]] = []

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_part(self, name: str, stop: Callable[[float], Any]) -> None:
        """A part built elsewhere (the service's HTTP server, the config watcher) joins the order;
        `stop(seconds)` gets what is left of the budget."""
        self._stops.append((name, stop))

    # --- the parts, in build order --------------------------------------------------------------

    def spool(self) -> Spool:
        """The spool as its owner (recovery runs here); SpoolBusy when another process owns it."""
        if self._spool is None:
            self._spool = Spool(self.cfg.spool, self.metrics)
            self.add_part("spool", lambda _s: self._spool.close() if self._spool else None)
        return self._spool

    def uploader(self, on_result: ResultCallback | None = None, *, thread: bool = True) -> Uploader:
        if self._uploader is None:
            self._uploader = Uploader(self.spool(), self.cfg.upload, self.metrics, __version__, on_result=on_result)
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
            self.add_part("pipeline", self._stop_pipeline)
        return self._pipeline

    def _stop_pipeline(self, seconds: float) -> None:
        assert self._pipeline is not None
        if not self._pipeline.stop(timeout=seconds):
            log.warning("pipeline did not stop in %.1f s; unfinished clips are discarded", seconds)

    # --- what the commands share with the pipeline ----------------------------------------------

    def detector(self) -> Detector:
        """The daemon's detector: same decoder, options, region of interest and downscale."""
        return Detector(self.cfg.detector)

    def validator(self) -> CidValidator:
        """The one CID rule."""
        return CidValidator(self.cfg.detector.cid_pattern, self.cfg.detector.cid_max_length)

    def source(self) -> AvSource:
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
