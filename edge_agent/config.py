"""Configuration: a pydantic model of the YAML file technicians edit, and its loader.

Errors must be actionable over a slow SSH session, so each one names the file,
line and column, the dotted key, and what is allowed. Every key is marked live
(applies on reload) or restart-only in its schema entry.
"""

from __future__ import annotations

import difflib
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edge_agent import const

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


class SourceConfig(_Section):
    kind: Literal["file", "v4l2", "url", "pipe"] = Field("file", **_restart(
        "Where video comes from: file (replay), v4l2 (USB camera), url (RTSP/HTTP camera), "
        "pipe (a command writing video to stdout)."))
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
    max_age_s: float = Field(const.SPOOL_MAX_AGE_S, gt=0, **_live("Clips older than this are dropped, logged."))
    on_full: Literal["drop_oldest", "reject_new"] = Field("drop_oldest", **_live(
        "When a bound is hit: drop the oldest waiting clip, or refuse the new one."))


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
    device_id: str = Field(default_factory=socket.gethostname, **_live(
        "Name of this device in metadata; default: the host name."))
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", **_live("Log verbosity."))
    source: SourceConfig = Field(default_factory=SourceConfig)
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    clip: ClipConfig = Field(default_factory=ClipConfig)
    upload: UploadConfig = Field(default_factory=UploadConfig)
    spool: SpoolConfig = Field(default_factory=SpoolConfig)
    noreads: NoReadsConfig = Field(default_factory=NoReadsConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)

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


# --- loading -------------------------------------------------------------------------------------


def _node_at(root: yaml.Node | None, loc: tuple[Any, ...]) -> tuple[yaml.Node | None, bool]:
    """Walk a composed YAML tree along a pydantic error location; return the deepest node
    reached and whether it is the key node (for unknown keys) rather than the value."""
    node = root
    for i, part in enumerate(loc):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == str(part):
                    if i == len(loc) - 1:
                        return v, False
                    node = v
                    break
            else:
                return node, False
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            return node, False
    return node, False


def _key_node(root: yaml.Node | None, loc: tuple[Any, ...]) -> yaml.Node | None:
    parent, _ = _node_at(root, loc[:-1]) if len(loc) > 1 else (root, False)
    if isinstance(parent, yaml.MappingNode):
        for k, _v in parent.value:
            if k.value == str(loc[-1]):
                return k
    return parent


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: Any = Config
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part)) if isinstance(model, type) else None
        if field is None:
            return None
        ann = field.annotation
        args = getattr(ann, "__args__", ()) or (ann,)
        model = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            return None
    return model


def _field_type(path: tuple[str, ...]) -> Any:
    """The schema's type at a dotted path (a key inside a dict field gets the dict's value type);
    None when the path leads nowhere."""
    if not path:
        return None
    model = _model_at(path[:-1])
    if model is not None:
        field = model.model_fields.get(path[-1])
        return field.annotation if field is not None else None
    parent = _field_type(path[:-1])
    return get_args(parent)[1] if get_origin(parent) is dict else None


def _wants_text(path: tuple[str, ...]) -> bool:
    ann = _field_type(path)
    return ann is str or (get_origin(ann) in (Union, UnionType) and str in get_args(ann))


def _text_as_written(node: yaml.Node | None, data: Any, path: tuple[str, ...] = ()) -> None:
    """Where the schema wants text, take an unquoted number or boolean as written: `framerate: 30`
    is "30" and `device_id: 0042` stays "0042" (YAML alone would make it the octal number 34)."""
    if not isinstance(node, yaml.MappingNode) or not isinstance(data, dict):
        return
    for k, v in node.value:
        if not isinstance(k, yaml.ScalarNode) or k.value not in data:
            continue
        sub = (*path, k.value)
        value = data[k.value]
        if isinstance(v, yaml.MappingNode):
            _text_as_written(v, value, sub)
        elif (isinstance(v, yaml.ScalarNode) and v.style is None and value is not None
              and not isinstance(value, str) and _wants_text(sub)):
            data[k.value] = v.value


def _duplicate_keys(root: yaml.Node | None, filename: str) -> list[str]:
    """A key given twice: YAML keeps the last one silently, so a technician's edit further up would
    not count; refuse it and name both lines."""
    lines: list[str] = []
    seen_nodes: set[int] = set()

    def walk(node: yaml.Node, prefix: str) -> None:
        if id(node) in seen_nodes:  # an alias repeats a node already checked
            return
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[str, yaml.Node] = {}
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                    if k.value in first:
                        m = k.start_mark
                        lines.append(f"{filename}:{m.line + 1}:{m.column + 1}: {prefix}{k.value} given twice "
                                     f"(first at line {first[k.value].start_mark.line + 1})")
                    else:
                        first[k.value] = k
                    walk(v, f"{prefix}{k.value}.")
                else:
                    walk(v, prefix)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, f"{prefix.removesuffix('.')}[{i}].")

    if root is not None:
        walk(root, "")
    return lines


def _first_word(text: str, mark: yaml.Mark) -> str:
    line = text.splitlines()[mark.line] if mark.line < len(text.splitlines()) else ""
    words = line[mark.column:].split("#", 1)[0].split()
    return words[0] if words else ""


def _starts_its_line(text: str, mark: yaml.Mark) -> bool:
    line = text.splitlines()[mark.line] if mark.line < len(text.splitlines()) else ""
    return line[:mark.column].strip(" -") == ""


def _plain_scalar_before(text: str, mark: yaml.Mark) -> yaml.ScalarToken | None:
    """The last unquoted scalar the scanner read before `mark` (the scan stops at the error)."""
    last = None
    try:
        for tok in yaml.scan(text, Loader=yaml.SafeLoader):
            if tok.start_mark.index >= mark.index:
                break
            last = tok
    except yaml.YAMLError:
        pass
    return last if isinstance(last, yaml.ScalarToken) and last.plain else None


def _syntax_error(exc: yaml.MarkedYAMLError, text: str, filename: str) -> str:
    """PyYAML's scanner messages, turned into the mistake a person made where there is a known one."""
    m = exc.problem_mark or exc.context_mark
    problem = exc.problem or ""

    def at(mark: yaml.Mark) -> str:
        return f"{filename}:{mark.line + 1}:{mark.column + 1}"

    if m is not None and problem.startswith("found character '\\t'"):
        how = "indent with spaces" if _starts_its_line(text, m) else "use spaces"
        return f"{at(m)}: tabs are not allowed in YAML, {how}"
    # A key without its colon: alone on the last line of a block PyYAML says "could not find expected
    # ':'" at the key; followed by more keys, it reads the key and the next lines as one multi-line
    # text and stumbles on the next ':' a line too late.
    key_mark = None
    hint = ""
    if exc.context == "while scanning a simple key" and exc.context_mark is not None:
        key_mark = exc.context_mark
    elif m is not None and (problem.startswith("mapping values are not allowed")
                            or problem.startswith("expected <block end>")):
        scalar = _plain_scalar_before(text, m)
        if scalar is not None and scalar.start_mark.line < m.line:
            if _starts_its_line(text, scalar.start_mark):
                key_mark = scalar.start_mark
            else:
                hint = _indent_hint(text, m.line, scalar.start_mark.line)
    if key_mark is not None and _first_word(text, key_mark):
        n = key_mark.line + 1
        return f"{at(key_mark)}: line {n} has no ':' after '{_first_word(text, key_mark)}' (a key needs 'key: value')"
    where = at(m) if m is not None else filename
    ctx = exc.context_mark
    opened = (f" ({exc.context} at line {ctx.line + 1}, column {ctx.column + 1})"
              if exc.context and ctx is not None and exc.problem else "")
    return f"{where}: YAML syntax error: {exc.problem or exc.context}{opened}{hint}"


def _indent_hint(text: str, line: int, above: int) -> str:
    """Two keys of one section at different indents (0-based line numbers): say which way it is off."""
    lines = text.splitlines()

    def indent(n: int) -> int:
        return len(lines[n]) - len(lines[n].lstrip(" "))

    if line >= len(lines) or indent(line) == indent(above):
        return ""
    if indent(line) > indent(above):
        return (f" (line {line + 1} is indented deeper than line {above + 1}, so it reads as part of line "
                f"{above + 1}'s value: keys of one section must line up)")
    return f" (line {line + 1} is indented less than line {above + 1}: keys of one section must line up)"


def _env_suggestion(path: tuple[str, ...], loc: tuple[Any, ...]) -> str:
    """The variable the technician probably meant, for an unknown key set from the environment."""
    i = len(loc) - 1
    model = _model_at(tuple(loc[:-1]))
    names = list(model.model_fields) if model else []
    bad = str(loc[-1])
    fixed: tuple[str, ...] | None = None
    for name in names:  # UPLOAD_URL: one underscore where section and key need two
        sub = _model_at((*map(str, loc[:-1]), name))
        if sub is not None and bad.startswith(name + "_") and bad[len(name) + 1:] in sub.model_fields:
            fixed = (name, bad[len(name) + 1:])
    if fixed is None:
        close = difflib.get_close_matches(bad, names, n=1, cutoff=0.6)
        fixed = (close[0],) if close else None
    if fixed is None or i >= len(path):
        return f"allowed: {', '.join(names)}"
    var = ENV_PREFIX + "__".join((*path[:i], *fixed, *path[i + 1:])).upper()
    return f"did you mean {var}?"


def _same_start(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def _allowed(err: dict[str, Any]) -> str:
    ctx = err.get("ctx") or {}
    t = err["type"]
    if t == "literal_error":
        return f" (allowed: {ctx.get('expected', '')})"
    for k, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if k in ctx:
            return f" (allowed: {sym} {ctx[k]})"
    if t in ("bool_parsing", "bool_type"):
        return " (allowed: true, false)"
    if t.startswith(("int_", "float_")):
        return " (allowed: a number)"
    if t == "string_type":
        return " (allowed: text)"
    return ""


def _format_errors(exc: ValidationError, root: yaml.Node | None, filename: str,
                   overrides: dict[tuple[str, ...], tuple[str, Any]] | None = None) -> list[str]:
    lines = []
    overrides = overrides or {}
    for err in exc.errors():
        loc = tuple(p for p in err["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        # the variable that set this key, or the one under an unknown section it made (UPLOD__URL)
        env_path, env_var = next(((path, var) for path, (var, _v) in overrides.items()
                                  if loc and _same_start(tuple(map(str, loc)), path)), ((), None))
        if env_var is not None:
            text = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                text = f"unknown key ({_env_suggestion(env_path, loc)})"
            lines.append(f"environment {env_var}: {key}: {text}{_allowed(err)}")
            continue
        if err["type"] == "extra_forbidden":
            node = _key_node(root, loc)
            model = _model_at(loc[:-1])
            names = list(model.model_fields) if model else []
            close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else f"allowed: {', '.join(names)}"
            if loc == ("metrics",):  # renamed in 0.x: the metrics server became the device's web server
                hint = "renamed: the section is now http: (http.port, http.host)"
            msg = f"{key}: unknown key ({hint})"
        elif err["type"] == "model_type":
            # a section given a value instead of `key: value` lines under it
            node, _ = _node_at(root, loc)
            key_node = _key_node(root, loc)
            if (isinstance(node, yaml.ScalarNode) and node.style is None and node.value.split()
                    and key_node is not None and key_node.start_mark.line < node.start_mark.line):
                n = node.start_mark.line + 1
                msg = f"line {n} has no ':' after '{node.value.split()[0]}' (a key needs 'key: value')"
            else:
                msg = f"{key}: a section: expected indented 'key: value' lines under it, got {err['input']!r}"
        else:
            text = err["msg"].removeprefix("Value error, ")
            if not loc:
                # a cross-field conflict: point at the first key the message names
                named = re.search(r"\b([a-z_]+)\.([a-z_]+)\b", text)
                if named:
                    loc = (named[1], named[2])
                    key = f"{named[1]}.{named[2]}"
            node, _ = _node_at(root, loc)
            got = f", got {err['input']!r}" if loc and not isinstance(err.get("input"), dict) else ""
            got = ", got an empty value" if got and err["input"] is None else got
            msg = f"{key}: {text}{got}{_allowed(err)}"
        if node is not None:
            m = node.start_mark
            lines.append(f"{filename}:{m.line + 1}:{m.column + 1}: {msg}")
        else:
            lines.append(f"{filename}: {msg}")
    return lines


ENV_PREFIX = "EDGE_AGENT__"


def env_overrides(env: Mapping[str, str] | None = None) -> dict[tuple[str, ...], tuple[str, Any]]:
    """`EDGE_AGENT__UPLOAD__URL=http://...` -> {("upload", "url"): ("EDGE_AGENT__UPLOAD__URL", value)}.

    Deployment knobs (server URL, device id, spool folder) differ per device while the YAML is
    shared across a fleet; values are YAML scalars, so `true`, `2.5` and `[a, b]` keep their types.
    """
    env = os.environ if env is None else env
    out: dict[tuple[str, ...], tuple[str, Any]] = {}
    for var, raw in env.items():
        if not var.startswith(ENV_PREFIX) or var == ENV_PREFIX:
            continue
        path = tuple(part.lower() for part in var[len(ENV_PREFIX):].split("__"))
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        if value is not None and not isinstance(value, str | dict | list) and _wants_text(path):
            value = raw.strip()  # a text key takes the text as given: DEVICE_ID=0042 is "0042", not 34
        out[path] = (var, value)
    return out


def _apply_env(data: dict[str, Any], overrides: dict[tuple[str, ...], tuple[str, Any]]) -> None:
    for path, (_var, value) in overrides.items():
        node = data
        for part in path[:-1]:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = {}
                node[part] = nxt
            node = nxt
        node[path[-1]] = value


def parse_config(text: str, filename: str = "<config>", *, strict_source: bool = True,
                 env: Mapping[str, str] | None = None) -> Config:
    """Parse and validate YAML text plus EDGE_AGENT__* environment overrides; raise ConfigError
    with located messages (`file:line:column` for the file, the variable's name for the environment).

    `strict_source=False` is for `replay`, which takes the video from the command line.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_syntax_error(exc, text, filename)]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([f"{filename}: YAML error: {exc}"]) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        if isinstance(root, yaml.ScalarNode) and root.style is None and isinstance(data, str) and data.split():
            m = root.start_mark
            raise ConfigError([f"{filename}:{m.line + 1}:{m.column + 1}: line {m.line + 1} has no ':' after "
                               f"'{data.split()[0]}' (a key needs 'key: value')"])
        raise ConfigError([f"{filename}:1:1: (top level): expected a mapping of keys, got {type(data).__name__}"])
    duplicates = _duplicate_keys(root, filename)
    if duplicates:
        raise ConfigError(duplicates)
    _text_as_written(root, data)
    overrides = env_overrides(env)
    _apply_env(data, overrides)
    try:
        cfg = Config.model_validate(data)
        if strict_source:
            _check_source(cfg)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, root, filename, overrides)) from exc
    except ValueError as exc:
        node, _ = _node_at(root, ("source",))
        m = node.start_mark if node is not None else None
        where = f"{filename}:{m.line + 1}:{m.column + 1}" if m else filename
        raise ConfigError([f"{where}: {exc}"]) from exc
    return cfg


def _check_source(cfg: Config) -> None:
    s = cfg.source
    if s.kind in ("file", "v4l2", "url") and not s.path:
        raise ValueError(f"source.path: required for source.kind {s.kind}")
    if s.kind == "pipe" and not s.command:
        raise ValueError("source.command: required for source.kind pipe")


def load_config(path: str | os.PathLike[str] | None, *, strict_source: bool = True,
                env: Mapping[str, str] | None = None) -> Config:
    """Load a config file (plus environment overrides); None gives the embedded defaults."""
    if path is None:
        return parse_config("", "<defaults>", strict_source=False, env=env)
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read config: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{p}: not UTF-8 text: {exc}"]) from exc
    return parse_config(text, str(p), strict_source=strict_source, env=env)


def provenance(text: str, filename: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Where each key set by the file or the environment came from: `file:line` or `env VAR`.
    Keys absent from both are defaults."""
    out: dict[str, str] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = f"{prefix}{k.value}"
                if isinstance(v, yaml.MappingNode) and prefix.count(".") < 1:
                    walk(v, key + ".")
                else:
                    out[key] = f"{filename}:{k.start_mark.line + 1}"

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        root = None
    if root is not None:
        walk(root, "")
    for path, (var, _v) in env_overrides(env).items():
        out[".".join(path)] = f"env {var}"
    return out
