"""Every metric the agent exports, declared once as a typed attribute of `Metrics`.

A declaration (a `MetricSpec` class attribute of `Metrics`) is the one place a metric's exported
name, type, help text, labels and buckets live. Each `Metrics` instance builds every declared metric
in its own registry, so two pipelines in one process (tests) never share a number, and components
write through the attribute:

    metrics.frames.inc()
    metrics.spool_dropped.labels(reason=reason).inc()
    metrics.spool_clips.set(n)
    with metrics.decode_seconds.time(): ...

Each attribute is typed by what may be done to it (`Count`, `Level`, `Timing`, or a protocol naming a
labelled metric's label keywords), so a misspelt metric, a gauge incremented or a wrong label is a
type error before it runs; at run time prometheus_client refuses the same (a missing attribute, a
counter going down, labels that are not the declared ones). The protocols only write: what a
component counted it keeps as its own state, in its status; the registry is for the scrape, and
nothing in edge_agent/ reads a metric back (tests/test_metrics.py checks every use).

The exposition is `prometheus_client`'s, the library every exporter uses: its text format is what a
Prometheus server and `promtool check metrics` expect, it has histograms and the process collector
(RSS, CPU, open fds), and it is pure Python without dependencies (fine on a Pi). Units are base units
(`_seconds`, `_bytes`); durations are histograms, not last-value gauges, so a dashboard can show
percentiles over any window.
"""

from __future__ import annotations

import platform
import threading
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar, cast, overload

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.context_managers import Timer

from edge_agent import __commit__, __version__

# `_created` series (one per counter and label set) double the exposition for a number no
# dashboard here uses.
prometheus_client.disable_created_metrics()

Kind = Literal["counter", "gauge", "histogram"]
M = TypeVar("M")

# Per-frame work on a Pi 4 is milliseconds; a clip is encoded in about a second; an upload to a
# server on the LAN takes tenths, over a bad link minutes; delivery after detection waits at least
# the clip's post-roll and, while the server is away, hours.
_FRAME_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_CLIP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_UPLOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_DELIVERY_BUCKETS = (1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0)

UPLOAD_RESULTS = ("delivered", "duplicate", "retry", "quarantined")


# --- what a component may do to a metric --------------------------------------------------------

class Count(Protocol):
    """A counter (or one label set of it): it only goes up."""

    def inc(self, amount: float = 1) -> None: ...


class Level(Protocol):
    """A gauge: the value as it is now."""

    def set(self, value: float) -> None: ...


class Timing(Protocol):
    """A histogram of durations: `observe(seconds)`, or `with h.time():` around the work (observed also
    when it raises)."""

    def observe(self, amount: float) -> None: ...

    def time(self) -> Timer: ...


class CountByReason(Protocol):
    def labels(self, *, reason: str) -> Count: ...


class CountByResult(Protocol):
    def labels(self, *, result: str) -> Count: ...


class CountByEncoder(Protocol):
    def labels(self, *, encoder: str) -> Count: ...


class BuildInfo(Protocol):
    def set_only(self, *, version: str, commit: str, python: str) -> None: ...


class AgentInfo(Protocol):
    def set_only(self, *, device_id: str, site: str, source_kind: str, config_sha256: str) -> None: ...


class InfoSeries:
    """An info gauge: always 1, its labels saying which build or which device and config, one label
    set at a time. A new label set is set before the old ones go, so a scrape in between sees both
    for that instant, never none (a fleet query joining on the info metric would lose the device)."""

    def __init__(self, gauge: Gauge, labels: tuple[str, ...]) -> None:
        self._gauge = gauge
        self._labels = labels
        self._lock = threading.Lock()  # a reload and the start may set it at once
        self._shown: set[tuple[str, ...]] = set()

    def set_only(self, **labels: str) -> None:
        with self._lock:
            self._gauge.labels(**labels).set(1)
            values = tuple(str(labels[name]) for name in self._labels)
            for old in self._shown - {values}:
                self._gauge.remove(*old)
            self._shown = {values}


# --- declarations --------------------------------------------------------------------------------

@dataclass(frozen=True)
class MetricSpec(Generic[M]):
    """One metric as exported; as a class attribute of `Metrics` it stands for the metric each
    instance builds (`Metrics.frames` is the declaration, `metrics.frames` the counter)."""

    name: str  # as exported (counters end in _total)
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    initial: tuple[str, ...] = ()  # values of the (single) label exported at 0 from the start
    info: bool = False  # an info gauge: one label set at a time (InfoSeries)

    @overload
    def __get__(self, obj: None, owner: type) -> MetricSpec[M]: ...

    @overload
    def __get__(self, obj: object, owner: type) -> M: ...

    def __get__(self, obj: object | None, owner: type) -> Any:
        # only reached on the class, or on an instance before Metrics.__init__ built its metrics
        # (an instance's built metric lives in its __dict__, which a non-data descriptor gives way to)
        if obj is None:
            return self
        raise AttributeError(f"{self.name} is not built: Metrics.__init__ builds every declared metric")

    def build(self, registry: CollectorRegistry) -> M:
        cls = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}[self.kind]
        kwargs: dict[str, Any] = {"buckets": self.buckets} if self.buckets else {}
        metric = cls(self.name, self.help, self.labels, registry=registry, **kwargs)
        for value in self.initial:
            metric.labels(value)
        return cast(M, InfoSeries(metric, self.labels) if self.info else metric)


def _counter(name: str, help: str) -> MetricSpec[Count]:
    return MetricSpec(name, "counter", help)


def _counter_by(name: str, help: str, label: str, initial: tuple[str, ...] = ()) -> MetricSpec[Any]:
    """A counter with one label; the attribute's annotation names the protocol of its label keyword."""
    return MetricSpec(name, "counter", help, (label,), initial=initial)


def _gauge(name: str, help: str) -> MetricSpec[Level]:
    return MetricSpec(name, "gauge", help)


def _info(name: str, help: str, *labels: str) -> MetricSpec[Any]:
    return MetricSpec(name, "gauge", help, labels, info=True)


def _histogram(name: str, help: str, buckets: tuple[float, ...]) -> MetricSpec[Timing]:
    return MetricSpec(name, "histogram", help, buckets=buckets)


class Metrics:
    """Every metric the agent exports, in a registry of its own. Thread-safe (prometheus_client locks
    each value). An attribute's name is the exported one without `edge_agent_` and `_total`."""

    # --- capture ---
    frames = _counter("edge_agent_frames_total", "Video packets (frames) read from the source.")
    frames_dropped = _counter(
        "edge_agent_frames_dropped_total",
        "Frames read but dropped before decoding because the decoder fell behind (live sources).")
    frames_undecoded = _counter(
        "edge_agent_frames_undecoded_total",
        "Frames left undecoded at the end of a keyframe interval (detector.max_blind_s); clips keep them.")
    frames_skipped = _counter(
        "edge_agent_frames_skipped_total",
        "Decoded frames not analysed because a newer frame arrived first (live sources).")
    source_errors = _counter("edge_agent_source_errors_total", "Errors opening or reading the video source.")
    source_restarts = _counter("edge_agent_source_restarts_total",
                               "Times the video source was reopened after an error or end.")
    source_stalls = _counter("edge_agent_source_stalls_total",
                             "Times no frame came for source.stall_s and the source was reopened.")
    source_up = _gauge("edge_agent_source_up",
                       "1 while the source delivers frames; 0 while it is away (being reopened with back-off, the "
                       "agent staying up) or not open yet.")
    source_away_seconds = _gauge("edge_agent_source_away_seconds",
                                 "Seconds the source has been away: since its last frame, or since the agent "
                                 "started if it never gave one; 0 while it is up.")
    ring_evicted_over_cap = _counter("edge_agent_ring_evicted_over_cap_total",
                                     "Packets evicted from the pre-roll ring buffer because it reached its byte cap.")
    # --- decode and detect ---
    frames_decoded = _counter("edge_agent_frames_decoded_total", "Frames decoded to pictures.")
    decode_errors = _counter("edge_agent_decode_errors_total", "Packets the video decoder rejected.")
    decode_seconds = _histogram(
        "edge_agent_decode_seconds",
        "Time to decode one packet (with frame threading part of the work shows in later calls).", _FRAME_BUCKETS)
    frames_analysed = _counter("edge_agent_frames_analysed_total",
                               "Frames the QR detector ran on (at detector.rate_hz).")
    detector_errors = _counter("edge_agent_detector_errors_total", "Frames on which the QR detector raised an error.")
    detect_seconds = _histogram("edge_agent_detect_seconds", "Time the QR detector took on one frame.",
                                _FRAME_BUCKETS)
    detections = _counter(
        "edge_agent_detections_total",
        "Sightings of a valid CID: one per analysed frame showing it, so one label seen for 2 s at 5 Hz counts 10. "
        "Events (one clip each) are edge_agent_events_total.")
    events = _counter("edge_agent_events_total",
                      "Detection events: a CID seen after its cooldown, each one clip and upload.")
    payloads_rejected = _counter("edge_agent_payloads_rejected_total",
                                 "QR payloads read that are not a valid CID (per frame).")
    noreads = _counter("edge_agent_noreads_total",
                       "Objects that passed the camera without any QR code being read (no-read events).")
    # --- clips ---
    clips = _counter("edge_agent_clips_total", "Clips made (encoded or remuxed to MP4).")
    clips_dropped = _counter(
        "edge_agent_clips_dropped_total",
        "Clips whose video was let go because the clip worker was behind, or at a stop because the stop budget "
        "ran out; the CID is still sent.")
    clip_errors = _counter("edge_agent_clip_errors_total",
                           "Clips that could not be made; the CID is still sent without video.")
    clip_encoder_failures: MetricSpec[CountByEncoder] = _counter_by(
        "edge_agent_clip_encoder_failures_total",
        "Failed encode attempts by encoder; the clip is tried with the next one in clip.encoders.", "encoder")
    clip_encoding_up = _gauge("edge_agent_clip_encoding_up",
                              "1 while clips that need re-encoding get video; 0 when every encoder failed the "
                              "last one.")
    clips_not_reencoded: MetricSpec[CountByReason] = _counter_by(
        "edge_agent_clips_not_reencoded_total",
        "Clips that kept the camera's H.264 although clip.width/height/fps ask to re-encode: a stop had no time, "
        "or re-encoding fell behind the reads (reason).", "reason")
    clip_seconds = _histogram("edge_agent_clip_seconds", "Time to make one clip (encode or remux, and write it).",
                              _CLIP_BUCKETS)
    # --- spool ---
    spool_clips = _gauge("edge_agent_spool_clips",
                         "Reads queued for upload in the spool, with their clip or waiting for it.")
    spool_reads_pending = _gauge("edge_agent_spool_reads_pending",
                                 "Reads committed to the spool whose clip is not made yet.")
    spool_bytes = _gauge("edge_agent_spool_bytes", "Bytes of video queued for upload in the spool.")
    spool_disk_free_bytes = _gauge("edge_agent_spool_disk_free_bytes", "Free bytes on the spool's file system.")
    read_durable_seconds = _histogram(
        "edge_agent_read_durable_seconds",
        "From a frame's analysis to its new read committed to the spool (an fsync of the queue's log).",
        _FRAME_BUCKETS)
    reads_not_durable = _counter(
        "edge_agent_reads_not_durable_total",
        "Reads the spool could not commit when they were made (a full disk, an I/O error): queued only once "
        "their clip is made.")
    spool_dropped: MetricSpec[CountByReason] = _counter_by(
        "edge_agent_spool_dropped_total",
        "Reads the spool gave up, by reason (max_age, lost, write_error): their CID never goes out.", "reason")
    spool_videos_dropped: MetricSpec[CountByReason] = _counter_by(
        "edge_agent_spool_videos_dropped_total",
        "Videos the spool let go to stay in its bounds or on a full disk, by reason; their reads still go out, "
        "CID-only.", "reason")
    spool_recovered: MetricSpec[CountByReason] = _counter_by(
        "edge_agent_spool_recovered_total", "Reads and clips recovered at spool start-up, by how.", "reason")
    spool_quarantined = _counter("edge_agent_spool_quarantined_total",
                                 "Clips moved to quarantine (refused by the server).")
    spool_videos_lost = _counter("edge_agent_spool_videos_lost_total",
                                 "Queued clips whose video file was gone or damaged; the CID was sent without video.")
    # --- upload ---
    uploads: MetricSpec[CountByResult] = _counter_by(
        "edge_agent_uploads_total", "Upload attempts by result (delivered, duplicate, retry, quarantined).",
        "result", initial=UPLOAD_RESULTS)
    upload_bytes = _counter("edge_agent_upload_bytes_total", "Bytes of video delivered.")
    upload_seconds = _histogram("edge_agent_upload_seconds",
                                "Time of one upload request, sending the clip to the answer.", _UPLOAD_BUCKETS)
    last_delivery_timestamp_seconds = _gauge(
        "edge_agent_last_delivery_timestamp_seconds",
        "Unix time the edge server last took a clip (delivered or already there); 0: none since start.")
    detection_to_delivery_seconds = _histogram(
        "edge_agent_detection_to_delivery_seconds",
        "Time from a CID's detection to its event's delivery (post-roll, clip, queue and upload).",
        _DELIVERY_BUCKETS)
    # --- the device's web server ---
    http_auth_failures = _counter(
        "edge_agent_http_auth_failures_total",
        "Wrong passwords given to the device's web server (each client is slowed after a few).")
    # --- the process ---
    fps = _gauge("edge_agent_fps", "Frames read per second over the last second.")
    build_info: MetricSpec[BuildInfo] = _info(
        "edge_agent_build_info", "Always 1; the labels say which agent build (version, git commit) and Python run.",
        "version", "commit", "python")
    # --- the fleet: which device, which config, can its clock be trusted ---
    info: MetricSpec[AgentInfo] = _info(
        "edge_agent_info", "Always 1; the labels say which device this is and which effective config it runs "
        "(sha256 over the merged config, device_id aside).", "device_id", "site", "source_kind", "config_sha256")
    config_reloads: MetricSpec[CountByResult] = _counter_by(
        "edge_agent_config_reloads_total",
        "Config reloads (SIGHUP or a saved file) by result: applied, or refused (the old config keeps running).",
        "result", initial=("applied", "refused"))
    config_last_reload_successful = _gauge(
        "edge_agent_config_last_reload_successful",
        "1 if the last config load (start or reload) was applied, 0 if the last reload was refused.")
    config_last_reload_success_timestamp_seconds = _gauge(
        "edge_agent_config_last_reload_success_timestamp_seconds",
        "Unix time the running config was last loaded successfully (start or reload).")
    clock_synchronized = _gauge("edge_agent_clock_synchronized",
                                "1 if the kernel says the system clock is NTP-synchronised (adjtimex, as "
                                "timedatectl), else 0: clip timestamps may be off.")

    def __init__(self, process: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        for attr, spec in self.declared().items():
            setattr(self, attr, spec.build(self.registry))
        self.build_info.set_only(version=__version__, commit=__commit__, python=platform.python_version())
        if process:
            ProcessCollector(registry=self.registry)

    @classmethod
    def declared(cls) -> dict[str, MetricSpec[Any]]:
        """Every declaration, by attribute name, in the order written."""
        return {attr: spec for attr, spec in vars(cls).items() if isinstance(spec, MetricSpec)}

    def prometheus_text(self) -> str:
        """Prometheus text exposition format 0.0.4."""
        return prometheus_client.generate_latest(self.registry).decode()


# Exported by prometheus_client's process collector, not declared here (Linux only).
COLLECTED = ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_virtual_memory_bytes",
             "process_open_fds", "process_max_fds", "process_start_time_seconds")


def declared_names() -> set[str]:
    """Every series name a scrape can show: declared names, histogram parts, collector names."""
    out = set(COLLECTED)
    for s in Metrics.declared().values():
        out.add(s.name)
        if s.kind == "histogram":
            out.update(f"{s.name}{suffix}" for suffix in ("_bucket", "_count", "_sum"))
    return out
