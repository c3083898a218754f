"""Ending a remuxed clip's presentation before its last picture, through the MP4 edit list.

FFmpeg's MP4 muxer writes the edit list from the packets it is given: negative timestamps hide a
keyframe lead-in at the start, but the presented end is always that of the last picture. A clip cut
from a stream with B-frames needs more at its end than it shows: the B-frames shown just before the
wanted end are predicted from a reference picture shown after it, so the file must hold that picture
and must not show it. Nothing in FFmpeg's muxer options sets the end, so this rewrites the duration
of the clip's one edit (and the track and movie durations that restate it) in place, once the muxer
has closed the file. Box sizes do not change; only the `moov` box is read and written back.

Readers honour it: FFmpeg (PyAV, ffprobe, OpenCV) marks the hidden picture discarded, decodes it
for the B-frames and does not output it.
"""

from __future__ import annotations

import struct
from pathlib import Path


class EditListError(Exception):
    """The file is not the single-track MP4 our muxer writes: no edit list to change."""


def _header(buf: bytes | bytearray, off: int, end: int) -> tuple[bytes, int, int]:
    """(type, header size, total size) of the box at buf[off:], which may run to `end`."""
    size, kind = struct.unpack_from(">I4s", buf, off)
    header = 8
    if size == 1:  # a 64-bit size follows the type
        size = struct.unpack_from(">Q", buf, off + 8)[0]
        header = 16
    elif size == 0:  # to the end of the enclosing space
        size = end - off
    if size < header or off + size > end:
        raise EditListError(f"malformed box {kind!r} at {off}")
    return kind, header, size


def _boxes(buf: bytes | bytearray, start: int, end: int) -> list[tuple[bytes, int, int, int]]:
    """(type, offset, header size, total size) of each box in buf[start:end]."""
    out = []
    off = start
    while off + 8 <= end:
        kind, header, size = _header(buf, off, end)
        out.append((kind, off, header, size))
        off += size
    return out


def _find_moov(path: Path) -> tuple[int, int]:
    """Offset and size of the top-level moov box, reading box headers only."""
    with path.open("rb") as f:
        f.seek(0, 2)
        file_size = f.tell()
        off = 0
        while off + 8 <= file_size:
            f.seek(off)
            kind, _, size = _header(f.read(16), 0, file_size - off)
            if kind == b"moov":
                return off, size
            off += size
    raise EditListError("no moov box")


def _child(buf: bytearray, parent: tuple[bytes, int, int, int], kind: bytes) -> tuple[bytes, int, int, int]:
    _, off, header, size = parent
    for box in _boxes(buf, off + header, off + size):
        if box[0] == kind:
            return box
    raise EditListError(f"no {kind.decode()} box")


def _duration_field(buf: bytearray, box: tuple[bytes, int, int, int], v0: int, v1: int) -> tuple[int, str]:
    """Offset and struct format of a duration field that sits at `v0` (version 0) or `v1` (version 1)
    bytes after the box's version/flags word."""
    _, off, header, _ = box
    version = buf[off + header]
    body = off + header + 4
    return (body + v1, ">Q") if version == 1 else (body + v0, ">I")


def end_presentation(path: Path, shown_s: float) -> None:
    """Make the clip at `path` present `shown_s` seconds from its first shown picture: the pictures
    after that stay in the file (decoders need them) and are no longer shown."""
    moov_off, moov_size = _find_moov(path)
    with path.open("r+b") as f:
        f.seek(moov_off)
        buf = bytearray(f.read(moov_size))
        moov = _boxes(buf, 0, moov_size)[0]
        mvhd = _child(buf, moov, b"mvhd")
        traks = [b for b in _boxes(buf, moov[2], moov_size) if b[0] == b"trak"]
        if len(traks) != 1:
            raise EditListError(f"{len(traks)} tracks, expected one")
        trak = traks[0]
        tkhd = _child(buf, trak, b"tkhd")
        elst = _child(buf, _child(buf, trak, b"edts"), b"elst")

        # mvhd: creation, modification, timescale, duration
        ts_off = _duration_field(buf, mvhd, 8, 16)[0]
        movie_scale = struct.unpack_from(">I", buf, ts_off)[0]
        if not movie_scale:
            raise EditListError("movie timescale is 0")
        _, off, header, _ = elst
        version = buf[off + header]
        count = struct.unpack_from(">I", buf, off + header + 4)[0]
        entry_size, fmt = (20, ">Qq") if version == 1 else (12, ">Ii")
        entries = [struct.unpack_from(fmt, buf, off + header + 8 + i * entry_size) for i in range(count)]
        media = [i for i, (_, media_time) in enumerate(entries) if media_time != -1]
        if not media:
            raise EditListError("the edit list shows no media")
        last = media[-1]
        wanted = round(shown_s * movie_scale)
        struct.pack_into(">Q" if version == 1 else ">I", buf, off + header + 8 + last * entry_size, wanted)
        total = sum(d for i, (d, _) in enumerate(entries) if i != last) + wanted

        # tkhd: creation, modification, track id, reserved, duration; mvhd: duration after the timescale
        for field_off, field_fmt in (_duration_field(buf, tkhd, 16, 24), _duration_field(buf, mvhd, 12, 20)):
            struct.pack_into(field_fmt, buf, field_off, total)
        f.seek(moov_off)
        f.write(buf)
