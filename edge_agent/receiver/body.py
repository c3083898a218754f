"""A form request read to its last byte before anything is decided: the text fields in memory, the video
part streamed to a part file in the data dir and hashed on the way (one write, no second pass).

A multipart body is complete only when its closing boundary has arrived. A body whose Content-Length
was honoured but that ends inside a part (a proxy that cut it, a client that sent less than it meant)
is refused with 400 and the reason `incomplete_body`, never read as a request without that part: a
video cut off after 100 bytes must not become a clip stored without video and acknowledged. The
parsing is python-multipart's; this module only routes its callbacks.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qsl

try:
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header
except ModuleNotFoundError:  # pragma: no cover - python-multipart before 0.0.13 (the extra allows 0.0.9)
    from multipart.exceptions import FormParserError  # type: ignore[no-redef]
    from multipart.multipart import MultipartParser, parse_options_header  # type: ignore[no-redef]
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from ..delivery import contract

# python-multipart logs each parse error itself; the refusal's own line (app.py) says it with the request's key
for _name in ("python_multipart", "multipart"):
    logging.getLogger(_name).setLevel(logging.ERROR)

# A text field larger than this is no field of the contract (metadata is capped far lower, in limits.py).
MAX_FIELD_BYTES = 1 << 20


class BodyRefused(Exception):
    """The request's body cannot be taken: `status` and `detail` for the reply, `reason` for a sender."""

    def __init__(self, status: int, detail: str, reason: str | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.reason = reason


@dataclass
class ReceivedVideo:
    """The video part as it arrived: in a part file not yet fsynced (the store makes it durable)."""

    path: Path
    size: int
    sha256: str
    filename: str | None


@dataclass
class ReceivedForm:
    fields: dict[str, str] = field(default_factory=dict)
    video: ReceivedVideo | None = None

    def discard(self) -> None:
        """Remove the video's part file unless the store has taken it (then it is gone from here already)."""
        if self.video is not None:
            self.video.path.unlink(missing_ok=True)


class _Parts:
    """python-multipart's callbacks: text fields kept, video bytes queued for the part file."""

    def __init__(self) -> None:
        self.fields: dict[str, str] = {}
        self.ended = False  # the closing boundary arrived
        self.video_seen = False
        self.video_filename: str | None = None
        self.pending = bytearray()  # video bytes parsed and not yet written
        self.current: str | None = None  # name of the part being read
        self._is_video = False
        self._data = bytearray()
        self._header = bytearray()
        self._value = bytearray()
        self._disposition = b""

    def callbacks(self) -> dict[str, Any]:
        return {"on_part_begin": self._begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
                "on_part_end": self._part_end, "on_end": self._end}

    def _begin(self) -> None:
        self.current, self._is_video, self._disposition = None, False, b""
        self._data = bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        if bytes(self._header).lower() == b"content-disposition":
            self._disposition = bytes(self._value)
        self._header, self._value = bytearray(), bytearray()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise BodyRefused(400, "a multipart part has no name in its Content-Disposition header")
        self.current = options[b"name"].decode("utf-8", errors="replace")
        if self.current == contract.FIELD_VIDEO:
            if self.video_seen:
                raise BodyRefused(400, f"more than one '{contract.FIELD_VIDEO}' part")
            self.video_seen, self._is_video = True, True
            filename = options.get(b"filename")
            self.video_filename = filename.decode("utf-8", errors="replace") if filename is not None else None

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_video:
            self.pending += data[start:end]
            return
        self._data += data[start:end]
        if len(self._data) > MAX_FIELD_BYTES:
            raise BodyRefused(413, f"form field {self.current!r} is over the {MAX_FIELD_BYTES} byte limit")

    def _part_end(self) -> None:
        if not self._is_video and self.current is not None:
            self.fields[self.current] = _text(self.current, bytes(self._data))
        self.current = None

    def _end(self) -> None:
        self.ended = True


def _text(name: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyRefused(400, f"form field {name!r} is not UTF-8") from None


def _open_part(folder: Path) -> IO[bytes]:
    return (folder / f"{uuid.uuid4().hex}.part").open("xb")


def _write(out: IO[bytes], data: bytes, digest: Any) -> None:
    out.write(data)
    out.flush()  # a full disk fails here, not later in a close nobody checks
    digest.update(data)


def _remove(out: IO[bytes]) -> None:
    with contextlib.suppress(OSError):
        out.close()
    os.unlink(out.name)


async def read_form(request: Request, part_dir: Path) -> ReceivedForm:
    """Read the whole body; raises BodyRefused (400 malformed or incomplete, 413 a field too large, 415
    not a form), and lets starlette's ClientDisconnect, limits.BodyTooSlow and the disk's OSError
    through. Whatever is raised, no part file is left behind."""
    ctype, options = parse_options_header(request.headers.get("content-type"))
    if ctype == b"application/x-www-form-urlencoded":
        return ReceivedForm(await _read_urlencoded(request))
    if ctype != b"multipart/form-data":
        body_len = request.headers.get("content-length", "0")
        if body_len.strip() == "0":
            return ReceivedForm()
        raise BodyRefused(415, "expected a multipart/form-data body (or application/x-www-form-urlencoded without "
                               f"a video), got Content-Type {ctype.decode('latin-1')[:80] or 'none'!r}")
    if not options.get(b"boundary"):
        raise BodyRefused(400, "multipart/form-data without a boundary parameter")
    parts = _Parts()
    try:
        parser = MultipartParser(options[b"boundary"], parts.callbacks())  # type: ignore[arg-type]
    except FormParserError as exc:
        raise BodyRefused(400, f"malformed multipart body: {exc}") from None
    digest = hashlib.sha256()
    size = 0
    out: IO[bytes] | None = None
    try:
        async for chunk in request.stream():
            try:
                parser.write(chunk)
            except FormParserError as exc:
                raise BodyRefused(400, f"malformed multipart body: {exc}") from None
            if parts.video_seen and out is None:
                out = await run_in_threadpool(_open_part, part_dir)
            if parts.pending:
                data = bytes(parts.pending)
                parts.pending.clear()
                await run_in_threadpool(_write, out, data, digest)
                size += len(data)
        if not parts.ended:
            where = (f"inside the '{parts.current}' part" if parts.current is not None else "between parts")
            got = f" after {size} bytes of video" if parts.current == contract.FIELD_VIDEO else ""
            raise BodyRefused(400, f"incomplete request body: it ended {where}{got}, before the multipart closing "
                                   "boundary; nothing was stored, send it again", contract.REASON_INCOMPLETE_BODY)
        if out is not None:
            out.close()
    except BaseException:
        if out is not None:
            _remove(out)
        raise
    video = ReceivedVideo(Path(out.name), size, digest.hexdigest(), parts.video_filename) if out else None
    return ReceivedForm(parts.fields, video)


async def _read_urlencoded(request: Request) -> dict[str, str]:
    """Text fields only (a CID-only request); the HTTP layer has checked the body is all there."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FIELD_BYTES:
            raise BodyRefused(413, f"a form without a video is over the {MAX_FIELD_BYTES} byte limit")
    try:
        return dict(parse_qsl(body.decode("latin-1"), keep_blank_values=True, encoding="utf-8", errors="strict"))
    except UnicodeDecodeError:
        raise BodyRefused(400, "a form field is not UTF-8") from None
