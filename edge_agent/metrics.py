"""Every metric the agent exports, declared once, and the small API the components count with.

The declarations (`DECLARED`) are the one place a metric's name, type, help text, labels and buckets
live; components call `metrics.inc/set/observe("edge_agent_...")` and an undeclared name, a wrong
type or a wrong label is an error at the call (and a test reads every call site for it). The
exposition is `prometheus_client`'s, the library every exporter uses: its text format is what a
Prometheus server and `promtool check metrics` expect, it has histograms and the process collector
(RSS, CPU, open fds), and it is pure Python without dependencies (fine on a Pi). Each `Metrics`
instance has its own registry, so two pipelines in one process (tests) never share a number.

Units are base units (`_seconds`, `_bytes`); durations are histograms, not last-value gauges, so a
dashboard can show percentiles over any window.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from edge_agent import __commit__, __version__

# `_created` series (one per counter and label set) double the exposition for a number no
# dashboard here uses.
prometheus_client.disable_created_metrics()

Kind = Literal["counter", "gauge", "histogram"]
T = TypeVar("T")

# Per-frame work on a Pi 4 is milliseconds; a clip is encoded in about a second; an upload to a
# server on the LAN takes tenths, over a bad link minutes; delivery after detection waits at least
# the clip's post-roll and, while the server is away, hours.
_FRAME_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_CLIP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_UPLOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_DELIVERY_BUCKETS = (1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0)


@dataclass(frozen=True)
class MetricSpec:
    name: str  # as exported (counters end in _total)
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    initial: tuple[str, ...] = ()  # values of the (single) label exported at 0 from the start


def _counter(name: str, help: str, *labels: str, initial: tuple[str, ...] = ()) -> MetricSpec:
    return MetricSpec(name, "counter", help, labels, initial=initial)


def _gauge(name: str, help: str, *labels: str) -> MetricSpec:
    return MetricSpec(name, "gauge", help, labels)


def _histogram(name: str, help: str, buckets: tuple[float, ...]) -> MetricSpec:
    return MetricSpec(name, "histogram", help, buckets=buckets)


UPLOAD_RESULTS = ("delivered", "duplicate", "retry", "quarantined")

DECLARED: dict[str, MetricSpec] = {s.name: s for s in (
    # --- capture ---
    _counter("edge_agent_frames_total", "Video packets (frames) read from the source."),
    _counter("edge_agent_frames_dropped_total",
             "Frames read but dropped before decoding because the decoder fell behind (live sources)."),
    _counter("edge_agent_frames_undecoded_total",
             "Frames left undecoded at the end of a keyframe interval (detector.max_blind_s); "
             "clips keep them."),
    _counter("edge_agent_frames_skipped_total",
             "Decoded frames not analysed because a newer frame arrived first (live sources)."),
    _counter("edge_agent_source_errors_total", "Errors opening or reading the video source."),
    _counter("edge_agent_source_restarts_total", "Times the video source was reopened after an error or end."),
    _counter("edge_agent_source_stalls_total", "Times no frame came for source.stall_s and the source was reopened."),
    _gauge("edge_agent_source_up", "1 while the source delivers frames; 0 while it is away (being reopened with "
           "back-off, the agent staying up) or not open yet."),
    _gauge("edge_agent_source_away_seconds", "Seconds the source has been away: since its last frame, or since the "
           "agent started if it never gave one; 0 while it is up."),
    _counter("edge_agent_ring_evicted_over_cap_total",
             "Packets evicted from the pre-roll ring buffer because it reached its byte cap."),
    # --- decode and detect ---
    _counter("edge_agent_frames_decoded_total", "Frames decoded to pictures."),
    _counter("edge_agent_decode_errors_total", "Packets the video decoder rejected."),
    _histogram("edge_agent_decode_seconds",
               "Time to decode one packet (with frame threading part of the work shows in later calls).",
               _FRAME_BUCKETS),
    _counter("edge_agent_frames_analysed_total", "Frames the QR detector ran on (at detector.rate_hz)."),
    _counter("edge_agent_detector_errors_total", "Frames on which the QR detector raised an error."),
    _histogram("edge_agent_detect_seconds", "Time the QR detector took on one frame.", _FRAME_BUCKETS),
    _counter("edge_agent_detections_total",
             "Sightings of a valid CID: one per analysed frame showing it, so one label seen for 2 s at 5 Hz "
             "counts 10. Events (one clip each) are edge_agent_events_total."),
    _counter("edge_agent_events_total", "Detection events: a CID seen after its cooldown, each one clip and upload."),
    _counter("edge_agent_payloads_rejected_total", "QR payloads read that are not a valid CID (per frame)."),
    _counter("edge_agent_noreads_total",
             "Objects that passed the camera without any QR code being read (no-read events)."),
    # --- clips ---
    _counter("edge_agent_clips_total", "Clips made (encoded or remuxed to MP4)."),
    _counter("edge_agent_clips_dropped_total",
             "Clips whose video was let go because the clip worker was behind, or at a stop because the "
             "stop budget ran out; the CID is still sent."),
    _counter("edge_agent_clip_errors_total", "Clips that could not be made; the CID is still sent without video."),
    _counter("edge_agent_clip_encoder_failures_total",
             "Failed encode attempts by encoder; the clip is tried with the next one in clip.encoders.", "encoder"),
    _gauge("edge_agent_clip_encoding_up",
           "1 while clips that need re-encoding get video; 0 when every encoder failed the last one."),
    _counter("edge_agent_clips_not_reencoded_total",
             "Clips that kept the camera's H.264 although clip.width/height/fps ask to re-encode: a stop had no "
             "time, or re-encoding fell behind the reads (reason).", "reason"),
    _histogram("edge_agent_clip_seconds", "Time to make one clip (encode or remux, and write it).", _CLIP_BUCKETS),
    # --- spool ---
    _gauge("edge_agent_spool_clips", "Reads queued for upload in the spool, with their clip or waiting for it."),
    _gauge("edge_agent_spool_reads_pending", "Reads committed to the spool whose clip is not made yet."),
    _gauge("edge_agent_spool_bytes", "Bytes of video queued for upload in the spool."),
    _gauge("edge_agent_spool_disk_free_bytes", "Free bytes on the spool's file system."),
    _histogram("edge_agent_read_durable_seconds",
               "From a frame's analysis to its new read committed to the spool (an fsync of the queue's log).",
               _FRAME_BUCKETS),
    _counter("edge_agent_reads_not_durable_total",
             "Reads the spool could not commit when they were made (a full disk, an I/O error): queued only "
             "once their clip is made."),
    _counter("edge_agent_spool_dropped_total",
             "Reads the spool gave up, by reason (max_age, lost, write_error): their CID never goes out.", "reason"),
    _counter("edge_agent_spool_videos_dropped_total",
             "Videos the spool let go to stay in its bounds or on a full disk, by reason; their reads still go "
             "out, CID-only.", "reason"),
    _counter("edge_agent_spool_recovered_total", "Reads and clips recovered at spool start-up, by how.", "reason"),
    _counter("edge_agent_spool_quarantined_total", "Clips moved to quarantine (refused by the server)."),
    _counter("edge_agent_spool_videos_lost_total",
             "Queued clips whose video file was gone or damaged; the CID was sent without video."),
    # --- upload ---
    _counter("edge_agent_uploads_total", "Upload attempts by result (delivered, duplicate, retry, quarantined).",
             "result", initial=UPLOAD_RESULTS),
    _counter("edge_agent_upload_bytes_total", "Bytes of video delivered."),
    _histogram("edge_agent_upload_seconds", "Time of one upload request, sending the clip to the answer.",
               _UPLOAD_BUCKETS),
    _gauge("edge_agent_last_delivery_timestamp_seconds",
           "Unix time the edge server last took a clip (delivered or already there); 0: none since start."),
    _histogram("edge_agent_detection_to_delivery_seconds",
               "Time from a CID's detection to its event's delivery (post-roll, clip, queue and upload).",
               _DELIVERY_BUCKETS),
    # --- the device's web server ---
    _counter("edge_agent_http_auth_failures_total",
             "Wrong passwords given to the device's web server (each client is slowed after a few)."),
    # --- the process ---
    _gauge("edge_agent_fps", "Frames read per second over the last second."),
    _gauge("edge_agent_build_info", "Always 1; the labels say which agent build (version, git commit) and Python run.",
           "version", "commit", "python"),
    # --- the fleet: which device, which config, can its clock be trusted ---
    _gauge("edge_agent_info", "Always 1; the labels say which device this is and which effective config it runs "
           "(sha256 over the merged config, device_id aside).", "device_id", "site", "source_kind", "config_sha256"),
    _counter("edge_agent_config_reloads_total",
             "Config reloads (SIGHUP or a saved file) by result: applied, or refused (the old config keeps running).",
             "result", initial=("applied", "refused")),
    _gauge("edge_agent_config_last_reload_successful", "1 if the last config load (start or reload) was applied, "
           "0 if the last reload was refused."),
    _gauge("edge_agent_config_last_reload_success_timestamp_seconds",
           "Unix time the running config was last loaded successfully (start or reload)."),
    _gauge("edge_agent_clock_synchronized", "1 if the kernel says the system clock is NTP-synchronised (adjtimex, "
           "as timedatectl), else 0: clip timestamps may be off."),
)}

# Exported by prometheus_client's process collector, not declared here (Linux only).
COLLECTED = ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_virtual_memory_bytes",
             "process_open_fds", "process_max_fds", "process_start_time_seconds")


class UndeclaredMetricError(KeyError):
    def __str__(self) -> str:
        return f"metric {self.args[0]!r} is not declared: add it to DECLARED in edge_agent/metrics.py"


def declared_names() -> set[str]:
    """Every series name a scrape can show: declared names, histogram parts, collector names."""
    out = set(COLLECTED)
    for s in DECLARED.values():
        out.add(s.name)
        if s.kind == "histogram":
            out.update(f"{s.name}{suffix}" for suffix in ("_bucket", "_count", "_sum"))
    return out


class Metrics:
    """One registry of the declared metrics. Thread-safe (prometheus_client locks each value)."""

    def __init__(self, process: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._metrics: dict[str, Any] = {}
        for spec in DECLARED.values():
            cls = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}[spec.kind]
            kwargs: dict[str, Any] = {"buckets": spec.buckets} if spec.buckets else {}
            metric = cls(spec.name, spec.help, spec.labels, registry=self.registry, **kwargs)
            for value in spec.initial:
                metric.labels(value)
            self._metrics[spec.name] = metric
        self.set("edge_agent_build_info", 1, version=__version__, commit=__commit__, python=platform.python_version())
        if process:
            ProcessCollector(registry=self.registry)

    def _child(self, name: str, kind: Kind, labels: dict[str, str]) -> Any:
        spec = DECLARED.get(name)
        if spec is None:
            raise UndeclaredMetricError(name)
        if spec.kind != kind:
            raise TypeError(f"metric {name} is a {spec.kind}, not a {kind}")
        metric = self._metrics[name]
        if set(labels) != set(spec.labels):
            raise ValueError(f"metric {name} takes labels ({', '.join(spec.labels) or 'none'}), "
                             f"got ({', '.join(sorted(labels)) or 'none'})")
        return metric.labels(**labels) if labels else metric

    def set_only(self, name: str, value: float, **labels: str) -> None:
        """Set this label set and drop every other one: an info metric whose labels change on reload
        (a new config hash) must not leave its old series behind."""
        self._child(name, "gauge", labels)
        metric = self._metrics[name]
        metric.clear()
        metric.labels(**labels).set(value)

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        self._child(name, "counter", labels).inc(amount)

    def set(self, name: str, value: float, **labels: str) -> None:
        self._child(name, "gauge", labels).set(value)

    def observe(self, name: str, value: float, **labels: str) -> None:
        self._child(name, "histogram", labels).observe(value)

    def timed(self, name: str, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)`, observing its duration in histogram `name` (also when it raises)."""
        child = self._child(name, "histogram", {})
        started = time.perf_counter()
        try:
            return fn(*args)
        finally:
            child.observe(time.perf_counter() - started)

    # --- reading (the daemon's status line, replay's report, tests) -----------------------------

    def _samples(self, name: str, sample: str) -> list[tuple[dict[str, str], float]]:
        if name not in DECLARED:
            raise UndeclaredMetricError(name)
        return [(s.labels, s.value) for family in self._metrics[name].collect() for s in family.samples
                if s.name == sample]

    def get(self, name: str, **labels: str) -> float:
        """A counter's or gauge's value for exactly these labels; 0 when never counted."""
        if DECLARED.get(name) is not None and DECLARED[name].kind == "histogram":
            raise TypeError(f"metric {name} is a histogram: use observations()")
        return next((v for lbl, v in self._samples(name, name) if lbl == labels), 0.0)

    def observations(self, name: str) -> tuple[int, float]:
        """A histogram's (count, sum)."""
        count = next((v for _, v in self._samples(name, f"{name}_count")), 0.0)
        total = next((v for _, v in self._samples(name, f"{name}_sum")), 0.0)
        return int(count), total

    def total(self, name: str) -> float:
        """Sum of a counter over all its label values."""
        return sum(v for _, v in self._samples(name, name))

    def labelled(self, name: str, label: str) -> dict[str, float]:
        """A counter's values by one label, e.g. drops by reason."""
        return {lbl.get(label, ""): v for lbl, v in self._samples(name, name)}

    def prometheus_text(self) -> str:
        """Prometheus text exposition format 0.0.4."""
        return prometheus_client.generate_latest(self.registry).decode()
