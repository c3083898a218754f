"""The frame rate an H.264 encoder wrote into its sequence parameter set (VUI timing info).

FFmpeg's raw H.264 demuxer assumes 25 fps whatever the stream says, and what its decoder reads
from the SPS cannot be told apart from that guess, so the SPS is read here: a few dozen lines
of Exp-Golomb parsing up to `time_scale / (2 * num_units_in_tick)`.
"""

from __future__ import annotations

_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


class _Bits:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def u(self, n: int) -> int:
        v = 0
        for _ in range(n):
            byte = self.data[self.pos >> 3]  # IndexError past the end: a truncated SPS
            v = (v << 1) | ((byte >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return v

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("bad Exp-Golomb code")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


def _unescape(nal: bytes) -> bytes:
    """Drop emulation-prevention bytes (00 00 03 -> 00 00)."""
    return nal.replace(b"\x00\x00\x03", b"\x00\x00")


def _annexb_nals(data: bytes) -> list[bytes]:
    parts = data.replace(b"\x00\x00\x00\x01", b"\x00\x00\x01").split(b"\x00\x00\x01")
    return [p for p in parts if p]


def find_sps(data: bytes | None) -> bytes | None:
    """The first SPS NAL unit in Annex-B data or an avcC record (MP4 extradata)."""
    if not data:
        return None
    if data[0] == 1 and len(data) > 8:  # avcC: version 1, ..., numSPS at [5], then 16-bit length
        n = int.from_bytes(data[6:8], "big")
        sps = data[8:8 + n]
        return sps if sps and sps[0] & 0x1F == 7 else None
    return next((n for n in _annexb_nals(data) if n[0] & 0x1F == 7), None)


def _skip_scaling_list(b: _Bits, size: int) -> None:
    last = nxt = 8
    for _ in range(size):
        if nxt:
            nxt = (last + b.se() + 256) % 256
        last = nxt or last


def sps_fps(sps: bytes) -> float | None:
    """Frames per second from an SPS NAL unit's VUI timing info; None when it has none."""
    try:
        b = _Bits(_unescape(sps[1:]))
        profile = b.u(8)
        b.u(16)  # constraint flags, level
        b.ue()  # seq_parameter_set_id
        if profile in _HIGH_PROFILES:
            chroma = b.ue()
            if chroma == 3:
                b.u(1)
            b.ue()
            b.ue()
            b.u(1)
            if b.u(1):  # seq_scaling_matrix_present
                for i in range(12 if chroma == 3 else 8):
                    if b.u(1):
                        _skip_scaling_list(b, 16 if i < 6 else 64)
        b.ue()  # log2_max_frame_num_minus4
        poc_type = b.ue()
        if poc_type == 0:
            b.ue()
        elif poc_type == 1:
            b.u(1)
            b.se()
            b.se()
            for _ in range(b.ue()):
                b.se()
        b.ue()  # max_num_ref_frames
        b.u(1)
        b.ue()
        b.ue()  # picture size in macroblocks
        if not b.u(1):  # frame_mbs_only
            b.u(1)
        b.u(1)
        if b.u(1):  # frame_cropping
            for _ in range(4):
                b.ue()
        if not b.u(1):  # vui_parameters_present
            return None
        if b.u(1) and b.u(8) == 255:  # aspect_ratio_info: extended SAR
            b.u(32)
        if b.u(1):  # overscan_info_present
            b.u(1)
        if b.u(1):  # video_signal_type_present
            b.u(4)
            if b.u(1):
                b.u(24)
        if b.u(1):  # chroma_loc_info_present
            b.ue()
            b.ue()
        if not b.u(1):  # timing_info_present
            return None
        units, scale = b.u(32), b.u(32)
    except (IndexError, ValueError):
        return None
    if not units or not scale:
        return None
    fps = scale / (2 * units)
    return round(fps, 3) if 1 <= fps <= 240 else None


def stream_fps(extradata: bytes | None, first_packet: bytes | None = None) -> float | None:
    """The SPS frame rate from extradata, else from a packet that carries its SPS in-band."""
    for data in (extradata, first_packet):
        sps = find_sps(data)
        if sps is not None:
            return sps_fps(sps)
    return None
