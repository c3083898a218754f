"""The configuration's schema: a pydantic model of the YAML file technicians edit.

Every key carries its description and whether it applies on reload (live) or needs a restart, which
`edge-agent config reference --out docs` turns into docs/config-reference.md and docs/config.schema.json.
"""

from __future__ import annotations

import re
import socket
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from edge_agent import const
from edge_agent.config import pi_models

# Longest device_id and site: what the reference receiver's /ingest/list takes as a filter for either.
LABEL_MAX_CHARS = 200
# A conservative camera bitrate (1080p30 H.264 from an IP camera at high quality) for checking that
# the ring can hold the configured pre- and post-roll.
ASSUMED_BITRATE_BPS = 20_000_000

EXIT_CONFIG = const.EXIT_CONFIG  # systemd's RestartPreventExitStatus=78 stops a restart loop


def _live(description: str) -> dict[str, Any]:
    return {"description": description, "json_schema_extra": {"reload": "live"}}


def _restart(description: str) -> dict[str, Any]:
    return {"description": description, "json_schema_extra": {"reload": "restart"}}


def _scalar_text(v: Any) -> Any:
    """A number or boolean as the text FFmpeg (or a person) would write; anything else unchanged."""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int | float):
        return str(v)
    return v


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Picamera2Config(_Section):
    camera: int = Field(0, ge=0, le=7, **_restart("Camera number, as `rpicam-hello --list-cameras` lists it."))
    model: Literal["auto", "pi3", "pi4", "pi5"] = Field("auto", **_restart(
        "The Raspberry Pi the camera is on, for the main stream's H.264 encoder: pi4 (also 400, CM4) and pi3 (also "
        "Zero 2 W, CM3, older) encode in hardware, at most 1920x1080; pi5 (also 500, CM5) has no H.264 encoder, "
        "picamera2 encodes with libx264 in software. auto: the Pi the config is loaded on "
        "(/proc/device-tree/model; on a machine that is not a Pi nothing is checked). A main stream beyond the "
        "model's encoder is refused, for the model named here and for the Pi it runs on."))
    width: int = Field(1920, ge=64, le=4608, **_restart("Main stream width: the H.264 kept for clips."))
    height: int = Field(1080, ge=64, le=2592, **_restart("Main stream height."))
    lores_width: int = Field(1280, ge=64, le=4608, **_restart(
        "Width of the ISP's small YUV stream the QR detector reads (no larger than the main stream; more pixels "
        "read smaller codes, cost more detector time)."))
    lores_height: int = Field(720, ge=64, le=2592, **_restart("Height of the detector's stream."))
    keyframe_every: int = Field(30, ge=1, le=600, **_restart(
        "Frames between H.264 keyframes (30 at 30 fps: one a second, for predictable pre-roll)."))
    bitrate: int | None = Field(None, ge=100_000, le=50_000_000, **_restart(
        "H.264 bits per second. Empty: picamera2's choice for the size."))

    @model_validator(mode="after")
    def _lores_fits(self) -> Picamera2Config:
        if self.lores_width > self.width or self.lores_height > self.height:
            raise ValueError("the lores stream cannot be larger than the main stream")
        return self


class SourceConfig(_Section):
    kind: Literal["file", "v4l2", "url", "pipe", "picamera2"] = Field("file", **_restart(
        "Where video comes from: file (replay), v4l2 (USB camera), url (RTSP/HTTP camera), "
        "pipe (a command writing video to stdout), picamera2 (a Raspberry Pi CSI camera through picamera2: "
        "H.264 from the camera's encoder, the detector reads its small lores stream, nothing is decoded)."))
    picamera2: Picamera2Config = Field(default_factory=Picamera2Config, **_restart(
        "picamera2 only: stream sizes, the Pi it runs on (model: auto, pi3, pi4, pi5, for its H.264 encoder's "
        "limits) and encoder settings (frame rate: source.fps, default 30)."))
    path: str | None = Field(None, **_restart(
        "File path (file), device node such as /dev/video0 (v4l2), or stream URL (url)."))
    command: str | None = Field(None, **_restart(
        "pipe only: the command whose stdout is a video stream, e.g. 'rpicam-vid -t 0 --codec mjpeg -o -'."))
    input_format: str | None = Field(None, **_restart(
        "FFmpeg demuxer to force (e.g. h264, mjpeg, v4l2). Empty: probe."))
    options: dict[str, str] = Field(
        default_factory=dict,
        description="Extra FFmpeg demuxer options, e.g. {video_size: 1280x720, framerate: 30, input_format: mjpeg}; "
        "values are handed to FFmpeg as text, numbers as written.",
        # editors following the schema must not flag `framerate: 30`, which the loader takes as "30"
        json_schema_extra={"reload": "restart",
                           "additionalProperties": {"type": ["string", "number", "boolean"]}})
    fps: float | None = Field(None, gt=0, le=240, **_restart(
        "Frame rate of a stream that carries no timestamps (raw H.264 or MJPEG on a pipe) when the stream "
        "does not say it (H.264 timing info wins). Empty: measured on the first seconds."))
    realtime: bool = Field(False, **_restart(
        "file only: pace frames at their recorded speed instead of as fast as possible."))
    loop: bool = Field(False, **_restart("file only: start again at the end instead of stopping."))
    stall_s: float = Field(const.SOURCE_STALL_S, gt=0, le=3600, **_live(
        "Seconds without a frame before the source is reopened (a change applies to the running session)."))
    open_timeout_s: float = Field(const.SOURCE_OPEN_TIMEOUT_S, gt=0, le=600, **_restart(
        "Seconds to wait for a network or pipe source to open and for each read."))

    @field_validator("picamera2")
    @classmethod
    def _picamera2_encoder_fits(cls, v: Picamera2Config, info: ValidationInfo) -> Picamera2Config:
        # only a camera in use: a picamera2 section left over beside another kind of source refuses nothing
        if info.data.get("kind") == "picamera2":
            refusal = pi_models.picamera2_refusal(v.model, v.width, v.height, pi_models.read_device_model())
            if refusal:
                raise ValueError(refusal)
        return v

    @field_validator("options", mode="before")
    @classmethod
    def _options_as_text(cls, v: Any) -> Any:
        # FFmpeg takes every option as a string; `framerate: 30` must not need quotes. The YAML loader
        # already hands over the text as written; this covers dicts built in code or from the environment.
        if isinstance(v, dict):
            return {k: _scalar_text(x) for k, x in v.items()}
        return v


class RoiConfig(_Section):
    left: float = Field(0.0, ge=0, lt=1, description="Left edge as a fraction of frame width.")
    top: float = Field(0.0, ge=0, lt=1, description="Top edge as a fraction of frame height.")
    right: float = Field(1.0, gt=0, le=1, description="Right edge as a fraction of frame width.")
    bottom: float = Field(1.0, gt=0, le=1, description="Bottom edge as a fraction of frame height.")

    @model_validator(mode="after")
    def _ordered(self) -> RoiConfig:
        if self.right <= self.left or self.bottom <= self.top:
            raise ValueError("region of interest is empty: need left < right and top < bottom")
        return self


class DetectorConfig(_Section):
    decoder: Literal["auto", "zxing", "zbar"] = Field("auto", **_live(
        "QR decoder: zxing (zxing-cpp, fastest and most robust), zbar (needs libzbar0), "
        "auto (zxing, else zbar)."))
    cid_pattern: str = Field(const.CID_PATTERN, **_live(
        "Regular expression a QR payload must match in full to be accepted as a CID."))
    cid_max_length: int = Field(const.CID_MAX_LENGTH, ge=1, le=4096, **_live(
        "Longest accepted CID, in characters."))
    cooldown_s: float = Field(const.COOLDOWN_S, ge=0, le=3600, **_live(
        "The same CID seen again within this many seconds of its last sighting is the same event, not a new "
        "clip (it extends the clip only with clip.extend_while_in_view)."))
    rate_hz: float = Field(const.DETECT_RATE_HZ, gt=0, le=120, **_live(
        "Frames per second of video handed to the QR decoder; more finds fast-moving labels, costs CPU."))
    max_blind_s: float = Field(const.MAX_BLIND_S, ge=0, le=10, **_live(
        "Video detection may leave undecoded at the end of each keyframe interval, at most this long, to save "
        "decoding (most of the agent's CPU): a label in view longer than this is still seen. Only with steady "
        "keyframes and closed GOPs, on a camera and in replay alike; clips keep every frame. 0: decode "
        "everything."))
    max_width_px: int = Field(const.DETECT_MAX_WIDTH_PX, ge=0, le=8192, **_live(
        "Downscale frames wider than this before decoding; 0 keeps full resolution."))
    roi: RoiConfig | None = Field(None, **_live(
        "Region of interest: only this part of the frame is searched. Empty: the whole frame."))

    @field_validator("cid_pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from exc
        return v


class ClipConfig(_Section):
    pre_roll_s: float = Field(const.PRE_ROLL_S, ge=0, le=60, **_live("Seconds of video kept before a detection."))
    post_roll_s: float = Field(const.POST_ROLL_S, ge=0, le=60, **_live("Seconds of video kept after it."))
    extend_while_in_view: bool = Field(False, **_live(
        "A CID seen again while its clip records pushes the clip's end back (up to clip.max_s). Off: every clip "
        "is exactly pre_roll_s + post_roll_s long, and a CID still in view within the cooldown is the same event."))
    max_s: float = Field(const.CLIP_MAX_S, gt=0, le=300, **_live(
        "Longest clip in seconds when clip.extend_while_in_view is on."))
    encoders: list[str] = Field(default_factory=lambda: list(const.ENCODERS), min_length=1, **_live(
        "H.264 encoders tried in order when a clip must be re-encoded: hardware first, libx264 last."))
    width: int | None = Field(None, ge=16, le=8192, **_live("Resize clips to this width (re-encodes). Empty: keep."))
    height: int | None = Field(None, ge=16, le=8192, **_live("Resize clips to this height (re-encodes)."))
    fps: float | None = Field(None, gt=0, le=240, **_live("Re-time clips to this frame rate (re-encodes)."))
    crf: int = Field(const.CRF, ge=0, le=51, **_live("libx264 quality when re-encoding: lower is better, larger."))
    preset: str = Field(const.X264_PRESET, **_live("libx264 preset when re-encoding (ultrafast..medium)."))
    ring_max_bytes: int = Field(const.RING_MAX_BYTES, ge=1 << 20, **_restart(
        "Hard cap on the memory the ring of recent video may hold; the oldest is dropped first."))

    @property
    def reencode(self) -> bool:
        return self.width is not None or self.height is not None or self.fps is not None


class UploadConfig(_Section):
    url: str | None = Field(None, **_live(
        "Edge server endpoint, e.g. http://edge-server:8000/cid. Empty: keep clips in the spool."))
    token_file: str | None = Field(None, **_live(
        "File holding a bearer token (or the name of a systemd credential in CREDENTIALS_DIRECTORY)."))
    ca_file: str | None = Field(None, **_live("CA bundle used to verify the server's certificate."))
    cert_file: str | None = Field(None, **_live("Client certificate for mutual TLS."))
    key_file: str | None = Field(None, **_live("Client private key for mutual TLS."))
    verify_tls: bool = Field(True, **_live("Verify the server's certificate. Turn off only on a lab bench."))
    connect_timeout_s: float = Field(const.CONNECT_TIMEOUT_S, gt=0, le=300, **_live("TCP/TLS connect timeout."))
    read_timeout_s: float = Field(const.READ_TIMEOUT_S, gt=0, le=3600, **_live(
        "Base read timeout; grows with the clip's size at upload.min_rate_bytes_per_s."))
    min_rate_bytes_per_s: int = Field(const.MIN_UPLOAD_RATE, gt=0, **_live(
        "Slowest upload rate tolerated before a request times out."))
    backoff_base_s: float = Field(const.BACKOFF_BASE_S, gt=0, le=3600, **_live("First retry delay ceiling."))
    backoff_cap_s: float = Field(const.BACKOFF_CAP_S, gt=0, le=86400, **_live("Longest retry delay."))

    @field_validator("url")
    @classmethod
    def _http(cls, v: str | None) -> str | None:
        if v and not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("must start with http:// or https:// followed by a host")
        return v or None


class SpoolConfig(_Section):
    dir: str = Field(default_factory=lambda: const.default_spool_dir(), **_restart(
        "Folder where clips wait until the server has them."))
    max_bytes: int = Field(const.SPOOL_MAX_BYTES, ge=1 << 20, **_live("Most bytes of clips kept waiting."))
    min_free_bytes: int = Field(const.SPOOL_MIN_FREE_BYTES, ge=0, **_live(
        "Keep at least this much of the disk free for the rest of the system."))
    max_age_s: float = Field(const.SPOOL_MAX_AGE_S, gt=0, **_live(
        "Clips queued longer than this are dropped, logged. Aged on the monotonic clock within a boot; across a "
        "reboot by the wall clock only when it was synchronised (NTP) both when the clip was queued and now, "
        "else the age is unknown and the clip kept."))
    on_full: Literal["drop_oldest", "reject_new"] = Field("drop_oldest", **_live(
        "When a bound is hit: drop the oldest waiting clip's video (when that can make room), or refuse the new "
        "one's. Reads are kept either way, CID-only."))


class NoReadsConfig(_Section):
    dir: str | None = Field(None, **_restart(
        "Folder for the images of codes seen but not read (no-reads). Empty: 'noreads' beside spool.dir."))
    max_files: int = Field(const.NOREADS_MAX_FILES, ge=0, le=100_000, **_live(
        "Most no-read images kept; the oldest are dropped first. 0: count no-reads, keep no image."))
    max_bytes: int = Field(const.NOREADS_MAX_BYTES, ge=0, **_live("Most bytes of no-read images kept."))


class HttpConfig(_Section):
    port: int | None = Field(None, ge=1, le=65535, **_restart(
        "Port of the device's web server: the live view at /, /metrics for Prometheus, /healthz. Empty: off."))
    host: str = Field("127.0.0.1", **_restart(
        "Address the web server listens on. Anything but loopback needs http.password_file."))
    password_file: str | None = Field(None, **_restart(
        "File holding the web password (HTTP Basic, any user name); a bare name may be a systemd credential. "
        "Default: the credential 'http-password' when present."))
    metrics_public: bool = Field(False, **_restart(
        "Serve /metrics without the password (for a Prometheus scraper); the rest still asks for it."))
    cert_file: str | None = Field(None, **_restart("TLS certificate (PEM) for HTTPS; needs http.key_file."))
    key_file: str | None = Field(None, **_restart("TLS private key (PEM) for HTTPS; needs http.cert_file."))


class Config(_Section):
    device_id: str = Field(default_factory=socket.gethostname, min_length=1, max_length=LABEL_MAX_CHARS, **_live(
        "Name of this device in metadata and in the edge_agent_info metric; default (or empty): the host name. "
        "Printable characters only (no newline, tab or other control character). The reference receiver files "
        "clips under it when it is letters, digits, '.', '_' and '-' (at most 64), else under unknown-device."))
    site: str | None = Field(None, max_length=LABEL_MAX_CHARS, **_live(
        "Where the device stands (plant, hall, line), the `site` label of edge_agent_info for fleet dashboards. "
        "Printable characters only. Empty: no site."))
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", **_live("Log verbosity."))
    source: SourceConfig = Field(default_factory=SourceConfig)
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    clip: ClipConfig = Field(default_factory=ClipConfig)
    upload: UploadConfig = Field(default_factory=UploadConfig)
    spool: SpoolConfig = Field(default_factory=SpoolConfig)
    noreads: NoReadsConfig = Field(default_factory=NoReadsConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)

    @field_validator("device_id", mode="before")
    @classmethod
    def _host_name_when_empty(cls, v: Any) -> Any:
        # `device_id: ""` (the packaged config.yaml's, or an empty EDGE_AGENT__DEVICE_ID) reads as "not set":
        # clips never go out nameless
        return socket.gethostname() if v is None or (isinstance(v, str) and not v.strip()) else v

    @field_validator("device_id", "site")
    @classmethod
    def _printable(cls, v: str | None) -> str | None:
        # both go into every log line and metric label that names the device: a newline would forge a
        # second log line, a control character garble a dashboard
        bad = next((i for i, c in enumerate(v or "") if not c.isprintable()), None)
        if v is not None and bad is not None:
            raise ValueError(f"only printable characters (letters, digits, spaces, punctuation; no newline, tab or "
                             f"other control character): {v[bad]!r} at character {bad + 1}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        # `clip:` with every key under it commented out is YAML null: the section's defaults, not an error
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None or k not in _SECTIONS}
        return data

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        if self.clip.pre_roll_s + self.clip.post_roll_s > self.clip.max_s:
            raise ValueError(
                f"clip.pre_roll_s + clip.post_roll_s ({self.clip.pre_roll_s + self.clip.post_roll_s:g} s) "
                f"exceeds clip.max_s ({self.clip.max_s:g} s)")
        need_s = self.clip.pre_roll_s + self.clip.post_roll_s + const.RING_MARGIN_S
        holds_s = self.clip.ring_max_bytes / (ASSUMED_BITRATE_BPS / 8)
        if need_s > holds_s:
            raise ValueError(
                f"clip.pre_roll_s + clip.post_roll_s need about {need_s:g} s of video in the ring, but "
                f"clip.ring_max_bytes ({self.clip.ring_max_bytes} bytes) holds only about {holds_s:.0f} s at "
                f"{ASSUMED_BITRATE_BPS // 1_000_000} Mbit/s: shorten the rolls or raise clip.ring_max_bytes")
        return self


_SECTIONS = ("source", "detector", "clip", "upload", "spool", "noreads", "http")


class ConfigError(Exception):
    """A config problem, already formatted as `file:line:column: key: problem (allowed: ...)` lines."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


# Environment overrides: EDGE_AGENT__SECTION__KEY=value
ENV_PREFIX = "EDGE_AGENT__"
