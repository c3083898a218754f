"""What a crash test checks at the end: every read an agent said it made reached the server once, whole.

A read is a `detected cid=<CID> clip=<event id>` line in an agent's log (logger edge_agent.pipeline). The
server (tests/flaky_server.py) keeps the first complete request per Idempotency-Key. The rules:

- lost: a read detected before a kill or a power cut that never reached the server;
- ghost: one CID (one physical label: tests/label_camera.py never shows a CID twice) delivered under two
  event ids, or a delivery whose event id no agent ever logged and whose CID no camera showed;
- unlogged (not an error): a delivery no agent logged, of a label the camera did show, once: the read was
  committed and the agent killed before its `detected` line reached the log (it logs after the commit,
  so that a line never promises what a crash can take);
- corrupt: a delivery whose metadata does not name its key and CID, whose video's bytes do not match
  metadata.clip.sha256 / size_bytes or do not decode, or with neither video nor clip.error (a read
  sent CID-only must say why).

Requests sent again under the same key are not errors (the server answers 409): they are counted as
wire duplicates, the price of at-least-once delivery.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av

# the agent logs a read once it is committed; a commit the disk refused (an I/O error) says `not_durable`:
# no promise is made for that read (after a real power cut it could not even have been logged)
DETECTED = re.compile(r"detected cid=(\S+) clip=([0-9A-Za-z-]+)(?P<rest>[^\n]*)")
QUEUED = re.compile(r"queued cid=\S+ clip=([0-9A-Za-z-]+)")


def detections(log_text: str) -> dict[str, str]:
    """event id -> CID for every read an agent's log says it made durable."""
    return {m.group(2): m.group(1) for m in DETECTED.finditer(log_text) if "not_durable" not in m.group("rest")}


def not_durable(log_text: str) -> dict[str, str]:
    """event id -> CID for every read whose commit the disk refused (logged `not_durable`)."""
    return {m.group(2): m.group(1) for m in DETECTED.finditer(log_text) if "not_durable" in m.group("rest")}


def queued(log_text: str) -> set[str]:
    """Event ids whose clip the spool said it holds (`queued cid=... clip=...`, logged once the put returned)."""
    return {m.group(1) for m in QUEUED.finditer(log_text)}


def read_log(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def video_problem(video: bytes, clip: Mapping[str, Any]) -> str | None:
    """Why a delivered video is not the clip its metadata describes, or None."""
    if hashlib.sha256(video).hexdigest() != clip.get("sha256"):
        return "sha256 does not match metadata.clip.sha256"
    if clip.get("size_bytes") is not None and clip["size_bytes"] != len(video):
        return f"{len(video)} bytes, metadata.clip.size_bytes {clip['size_bytes']}"
    try:
        with av.open(io.BytesIO(video), format="mp4") as c:
            frames = sum(1 for _ in c.decode(video=0))
    except av.FFmpegError as exc:
        return f"does not decode: {exc}"
    return None if frames else "no frame decodes"


@dataclass
class Verdict:
    detected: dict[str, str]  # event id -> CID, every read logged before a kill
    delivered: int = 0
    with_video: int = 0
    cid_only: dict[str, str] = field(default_factory=dict)  # event id -> clip.error
    lost: dict[str, str] = field(default_factory=dict)  # event id -> CID
    ghosts: list[str] = field(default_factory=list)
    unlogged: dict[str, str] = field(default_factory=dict)  # event id -> CID, committed, killed before its line
    corrupt: dict[str, str] = field(default_factory=dict)  # event id -> what is wrong
    wire_duplicates: int = 0

    def lost_after_queued(self, queued_ids: set[str]) -> dict[str, str]:
        """Reads lost although the spool had said it held them: never the price of a kill."""
        return {e: c for e, c in self.lost.items() if e in queued_ids}

    @property
    def ok(self) -> bool:
        return not (self.lost or self.ghosts or self.corrupt)

    def summary(self) -> str:
        return (f"{len(self.detected)} reads detected, {self.delivered} delivered ({self.with_video} with video, "
                f"{len(self.cid_only)} CID-only, {len(self.unlogged)} committed but killed before their log "
                f"line), {len(self.lost)} lost, {len(self.ghosts)} ghosts, "
                f"{len(self.corrupt)} corrupt, {self.wire_duplicates} requests sent again under their key")


def judge(detected: Mapping[str, str], delivered: Mapping[str, Any], complete_requests: Iterable[Any],
          shown: Collection[str] = ()) -> Verdict:
    """Check the rules above. `delivered` is FlakyServer.delivered (key -> Seen), `complete_requests` every
    complete request it saw (for the wire duplicates), `shown` every CID the camera showed
    (label_camera.labels_shown)."""
    v = Verdict(dict(detected), delivered=len(delivered))
    v.lost = {e: c for e, c in detected.items() if e not in delivered}
    by_cid: dict[str, list[str]] = defaultdict(list)
    for key, seen in delivered.items():
        try:
            meta = json.loads(seen.fields["metadata"])
        except (KeyError, ValueError) as exc:
            v.corrupt[key] = f"metadata unreadable: {exc}"
            continue
        cid = seen.fields.get("cid", b"").decode("utf-8", "replace")
        by_cid[cid].append(key)
        if key not in detected:
            if cid in shown:
                v.unlogged[key] = cid
            else:
                v.ghosts.append(f"{key} (cid {cid}) delivered, never logged as detected, and no camera showed it")
        elif detected[key] != cid:
            v.corrupt[key] = f"cid {cid!r} delivered, {detected[key]!r} detected"
        if meta.get("event_id") != key or meta.get("cid") != cid:
            v.corrupt[key] = f"metadata names event {meta.get('event_id')} cid {meta.get('cid')}"
            continue
        clip = meta.get("clip") or {}
        video = seen.fields.get("video")
        if video is None:
            if not clip.get("error"):
                v.corrupt[key] = "sent without video and without clip.error"
            else:
                v.cid_only[key] = clip["error"]
            continue
        problem = video_problem(video, clip)
        if problem:
            v.corrupt[key] = problem
        else:
            v.with_video += 1
    v.ghosts += [f"cid {cid} delivered under {len(keys)} event ids: {', '.join(keys)}"
                 for cid, keys in by_cid.items() if len(keys) > 1]
    per_key = Counter(s.key for s in complete_requests)
    v.wire_duplicates = sum(n - 1 for n in per_key.values() if n > 1)
    return v
