"""The wire contract between the agent and an edge server (docs/architecture.md, section 6).

This is the one module that both the agent (sender) and the reference receiver
import, so that field names, header names and the metadata shape cannot drift
apart. Integrators building their own server can read it as the specification.
"""

from __future__ import annotations

from datetime import datetime, timezone

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
    error: str | None = Field(None, description="Set, and video omitted, when no clip could be made.")


class DetectionInfo(_Model):
    decoder: str
    polygon: list[tuple[int, int]] = Field(default_factory=list)
    frame_width: int
    frame_height: int
    hits: int = 1
    last_detected_at: str | None = Field(
        None, description="Capture time of the last sighting folded into this event (its clip runs to it + post-roll).")


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
    schema_version: int = SCHEMA_VERSION
    event_id: str
    device_id: str
    cid: str
    detected_at: str
    clip: ClipInfo
    detection: DetectionInfo
    agent: AgentInfo
    clock: ClockInfo | None = None
