"""The wire contract between the agent and an edge server (docs/architecture.md, section 6).

This is the one module that both the agent (sender) and the reference receiver
import, so that field names, header names and the metadata shape cannot drift
apart. Integrators building their own server can read it as the specification.

The agent deletes its copy of a clip on a 2xx (or a 409), so a server answers 2xx only when:
the body arrived whole (the multipart closing boundary seen); the video's size and sha256 are
metadata.clip.size_bytes and .sha256; the video and its record are durable (fsynced, or the
database's or object store's commit returned). It should echo the stored video's sha256 as
RECEIPT_SHA256, and dedupe by Idempotency-Key (a key it has stored: the first reply again, or 409).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1

# multipart/form-data field names of POST /cid
FIELD_CID = "cid"
FIELD_METADATA = "metadata"
FIELD_VIDEO = "video"

VIDEO_CONTENT_TYPE = "video/mp4"

HEADER_IDEMPOTENCY_KEY = "Idempotency-Key"
HEADER_USER_AGENT = "User-Agent"
HEADER_AUTHORIZATION = "Authorization"
HEADER_RETRY_AFTER = "Retry-After"

CID_PATH = "/cid"
INGEST_LDO_PATH = "/ingest/ldo"
INGEST_LIST_PATH = "/ingest/list"

# The receipt: a 2xx reply's JSON may echo the sha256 of the video as the server stored it (null when it
# stored none). The agent then deletes its copy only when that is the sha256 it sent; a 2xx without the
# field is taken at its word (servers that do not send it).
RECEIPT_SHA256 = "sha256"

# Why a request was refused, for a sender to act on: the `reason` of a 4xx reply's JSON (beside `detail`,
# the words for people). A refusal without a reason is judged by its status alone.
FIELD_REASON = "reason"
# 400: the body ended before the multipart closing boundary (a transfer cut short): send it again.
REASON_INCOMPLETE_BODY = "incomplete_body"
# 422: the video's size or sha256 is not what metadata.clip says: the sender's file may be damaged.
REASON_VIDEO_MISMATCH = "video_mismatch"
# 408: the body came too slowly and the connection was closed: send it again.
REASON_BODY_TOO_SLOW = "body_too_slow"


def user_agent(version: str) -> str:
    return f"edge-agent/{version}"


def video_filename(event_id: str) -> str:
    """File names come from our own event ids, never from QR payloads."""
    return f"{event_id}.mp4"


def rfc3339(ts: float) -> str:
    """Wall-clock seconds to RFC 3339 UTC with milliseconds, e.g. 2026-11-24T06:22:57.123Z."""
    dt = datetime.fromtimestamp(ts, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


class _Model(BaseModel):
    # Receivers must accept keys added by newer agents: forward compatible.
    model_config = ConfigDict(extra="allow")


class ClipInfo(_Model):
    start_at: str | None = Field(None, description="Wall-clock time of the first frame shown.")
    end_at: str | None = Field(None, description="start_at + duration_s: the end of the last frame shown.")
    duration_s: float | None = Field(None, description="Presented duration: pre-roll + post-roll unless truncated.")
    frames: int | None = Field(None, description="Frames shown (an MP4 edit list hides the lead-in).")
    lead_in_s: float | None = Field(None, description=(
        "Seconds of video before start_at kept in the file, hidden by its edit list: the clip starts on a "
        "keyframe, so nothing is re-encoded."))
    truncated: str | None = Field(None, description=(
        "Why the clip shows less than pre-roll + post-roll: start_of_video, ring, shutdown, source_restart."))
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    codec: str | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    not_reencoded: str | None = Field(None, description=(
        "Set when the clip keeps the camera's own H.264 (its size and frame rate) although clip.width, height or "
        "fps ask to re-encode: `stopping` (the agent's stop had no time to re-encode) or `behind` (re-encoding "
        "could not keep up with the reads). A remux takes milliseconds, so every read keeps its video."))
    error: str | None = Field(None, description="Set, and video omitted, when no clip could be made.")


# Bounds of a clip's track (`DetectionInfo.track`, `.track_frames`). The track is a sample of whole
# frames: a frame in it holds every code read there and every other symbol located there, so a training
# set may use any of its frames as fully labelled; frames are thinned, never the codes in a frame. A label
# stays in view for a few seconds, ~10-40 analysed frames; past MAX_TRACK_FRAMES frames (or past
# MAX_TRACK_ENTRIES codes and symbols in them, or MAX_TRACK_CIDS different CIDs) fewer frames are kept,
# evenly spread, the first and the last kept, and the frame of the event's first read always. Worst case
# ~43 kB of JSON (tests/test_track_bounds.py measures it), nesting depth 8.
MAX_TRACK_FRAMES = 48
MAX_TRACK_ENTRIES = 288
MAX_TRACK_CIDS = 24
MAX_TRACK_EMPTY = 16  # empty analysed frames listed, evenly spread: background pictures for training


class Sighting(_Model):
    t: float = Field(description=(
        "Seconds from the clip's first presented frame (the MP4's presentation time as players show it, "
        "the edit list's hidden lead-in not counted), to the millisecond."))
    polygon: list[tuple[int, int]] = Field(description=(
        "The code's outline (x, y) in full-frame pixels of the source, whatever the detector's downscale "
        "or region of interest."))
    decoder: str = Field(description="What read it: zxing, zbar, or a cascade stage (zbar-region, "
                                     "zxing-enlarged, zbar-enlarged).")
    sharpness: float | None = Field(None, description="Variance of the Laplacian over the code's box in that frame.")


class TrackedCode(_Model):
    cid: str
    sightings: list[Sighting] = Field(default_factory=list, description=(
        "The code in each frame of the track (`track_frames.times`) in which it was read, in time order."))
    thinned_from: int | None = Field(None, description=(
        "How many analysed frames of the clip read it, when the track keeps fewer."))


class TrackSymbol(_Model):
    t: float = Field(description="Clip seconds of its frame, as `Sighting.t`.")
    polygon: list[tuple[int, int]] = Field(description="Its outline in full-frame pixels, as `Sighting.polygon`.")
    kind: Literal["rejected", "unread"] = Field(description=(
        "rejected: a QR code whose payload the CID rule refused (the payload is never sent: untrusted bytes); "
        "unread: a symbol located that no decoder could read."))


class TrackFrames(_Model):
    """Which frames the track holds, whole, and which analysed frames held nothing: what a training set
    needs to label a frame completely (every visible code boxed) and to pick background pictures."""

    times: list[float] = Field(default_factory=list, description=(
        "Clip seconds of the track's frames. Each holds every code read in it (`track`, whatever the CID) and "
        "every other symbol located in it (`symbols`)."))
    symbols: list[TrackSymbol] = Field(default_factory=list, description=(
        "QR symbols in those frames that are not a CID: refused payloads and located no-reads."))
    empty: list[float] = Field(default_factory=list, description=(
        f"Clip seconds of analysed frames in which nothing was read, refused or located, nor in the analysed "
        f"frame before and after: pictures without a code. At most {MAX_TRACK_EMPTY}, evenly spread."))
    analysed: int = Field(0, description="Frames of the clip analysed by the detector.")
    thinned_from: int | None = Field(None, description=(
        "Analysed frames with a code or symbol in them, when the track keeps fewer."))


class Quality(_Model):
    """Picture figures of the analysed frames in which the event's own code was read, computed by the same
    code as the live view and `snapshot` (edge_agent/inspection.py)."""

    frames: int = Field(description="Analysed frames in which the code was read.")
    sharpness_median: float | None = Field(None, description="Variance of the Laplacian of the code's box.")
    sharpness_min: float | None = Field(None, description="The worst (blurriest) frame's.")
    exposure_median: float | None = Field(None, description="Mean luma of the whole frame, 0-255.")
    exposure_worst: float | None = Field(None, description="The frame's mean luma farthest from mid-grey (128).")
    clipped_bright_max: float | None = Field(None, description="Largest fraction of blown-out pixels (> 250).")
    px_per_module: float | None = Field(None, description=(
        "Median pixels per QR module (side length / symbol width), when the decoder reported the version."))
    read_first_seen: bool = Field(description=(
        "The code was read on the first analysed frame it appeared in: false when the frame before its "
        "first read located a symbol there that nothing read."))


class DetectionInfo(_Model):
    decoder: str
    polygon: list[tuple[int, int]] = Field(default_factory=list)
    frame_width: int
    frame_height: int
    hits: int = 1
    last_detected_at: str | None = Field(
        None, description="Capture time of the last sighting folded into this event (its clip runs to it + post-roll).")
    track: list[TrackedCode] | None = Field(None, description=(
        f"The codes read in the track's frames (`track_frames`), the event's own CID first, then any other CID "
        f"in view (a second product), at most {MAX_TRACK_CIDS}: localisation labels for training. Absent when no "
        "clip was made, and from agents older than this field (then `polygon` is the one label)."))
    track_frames: TrackFrames | None = Field(None, description=(
        "The frames `track` covers, each whole, the other symbols in them and empty analysed frames. Absent "
        "when no clip was made, and from agents older than this field (their track thinned each CID on its own: "
        "a frame may lack a code that was read in it)."))
    quality: Quality | None = None


class ClockInfo(_Model):
    synchronized: bool | None = Field(None, description=(
        "Whether the device's wall clock was synchronised (NTP) when the clip's times were computed: false on "
        "a device without a real-time clock that has not reached a time server since it booted, whose times "
        "may be days or a year off; null when the device cannot tell."))
    max_error_s: float | None = Field(None, description="The kernel's estimate of the clock's maximum error.")
    source: str | None = Field(None, description="Where `synchronized` came from: adjtimex, override, unavailable.")


class AgentInfo(_Model):
    version: str


class Metadata(_Model):
    """`metadata` of `POST /cid`; its JSON Schema is docs/metadata.schema.json (`metadata_schema()`)."""

    schema_version: int = SCHEMA_VERSION
    event_id: str
    device_id: str
    cid: str
    detected_at: str
    clip: ClipInfo
    detection: DetectionInfo
    agent: AgentInfo
    clock: ClockInfo | None = None


def metadata_schema() -> dict:
    """The JSON Schema of the metadata, as docs/metadata.schema.json holds it."""
    schema = Metadata.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "edge-agent clip metadata"
    return schema
