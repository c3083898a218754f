"""The metadata the receiver accepts: the contract's shape (`edge_agent.delivery.contract.Metadata`) with
every field optional, since integrators and the data-ingestion API send partial metadata, but each
field that is present must have its contract type. Checked in full before anything is written, so
a malformed request is a 422 and never a half-stored clip that every retry would orphan again."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..delivery.contract import AgentInfo, ClipInfo, ClockInfo
from .limits import key_error, metadata_error

_SHA256 = r"^[0-9a-fA-F]{64}$"


class _Clip(ClipInfo):
    sha256: str | None = Field(None, pattern=_SHA256)
    size_bytes: int | None = Field(None, ge=0)


class _Detection(BaseModel):
    model_config = ConfigDict(extra="allow")
    decoder: str | None = None
    polygon: list[tuple[int, int]] | None = None
    frame_width: int | None = None
    frame_height: int | None = None
    hits: int | None = None
    last_detected_at: str | None = None


class ReceivedMetadata(BaseModel):
    model_config = ConfigDict(extra="allow")
    schema_version: int | None = None
    event_id: str | None = Field(None, min_length=1)
    device_id: str | None = None
    site: str | None = None
    cid: str | None = None
    detected_at: str | None = None
    clip: _Clip | None = None
    detection: _Detection | None = None
    agent: AgentInfo | None = None
    clock: ClockInfo | None = None

    @field_validator("detected_at")
    @classmethod
    def _rfc3339(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                datetime.fromisoformat(v.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError("not an RFC 3339 time such as 2026-11-24T08:00:00.000Z") from None
        return v

    @field_validator("event_id")
    @classmethod
    def _key_sized(cls, v: str | None) -> str | None:
        err = key_error(v, "event_id")
        if err:
            raise ValueError(err)
        return v


def parse_metadata(text: str | None) -> dict[str, Any] | None:
    """The metadata as a dict (as sent, extra keys kept), None when absent; raises ValueError with a
    one-line reason naming the field."""
    if text is None:
        return None
    if err := metadata_error(text):
        raise ValueError(err)
    try:
        meta = json.loads(text)
    except ValueError:
        raise ValueError("metadata is not JSON") from None
    if not isinstance(meta, dict):
        raise ValueError("metadata must be a JSON object")
    try:
        ReceivedMetadata.model_validate(meta)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in ("metadata", *err["loc"]))
        raise ValueError(f"{where}: {err['msg']}") from None
    return meta


def video_mismatch(meta: dict[str, Any] | None, size: int | None, sha256: str | None) -> str | None:
    """Why the video received (`size`, `sha256`; None when the request had no video part) is not the one
    metadata.clip describes, or None. Only what the metadata states is checked: a sender that gives no
    size or sha256 gets its video stored as it came."""
    clip = (meta or {}).get("clip") or {}
    want_size, want_sha = clip.get("size_bytes"), clip.get("sha256")
    if sha256 is None:
        if want_sha:
            return "metadata.clip.sha256 describes a video but the request has no video part"
        return None
    if want_size is not None and want_size != size:
        return f"the video is {size} bytes, metadata.clip.size_bytes says {want_size}"
    if want_sha and want_sha.lower() != sha256:
        return f"the video's sha256 is {sha256}, metadata.clip.sha256 says {want_sha.lower()}"
    return None
