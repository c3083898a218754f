"""QR detection on grayscale frames, behind one interface over zxing-cpp and zbar.

The detector sees only luma (the Y plane needs no colour conversion), optionally cropped
to a region of interest and downscaled, and reports each code with the capture time of
its *frame* and its outline in full-frame pixel coordinates. It validates nothing: CID
checks happen on the payload it returns, in one place (`cid.py`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from edge_agent.capture.media import GrayFrame
from edge_agent.config import DetectorConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Code:
    """One decoded symbol: its raw payload and outline (x, y) in the decoder's input image."""

    payload: bytes
    polygon: tuple[tuple[int, int], ...]
    modules: int | None = None  # symbol width in modules (from the QR version), when the decoder says


@dataclass(frozen=True, slots=True)
class Detection:
    payload: bytes
    polygon: tuple[tuple[int, int], ...]  # full-frame pixel coordinates
    t: float  # capture time of the frame it was found in
    wall: float
    frame_width: int
    frame_height: int
    decoder: str
    modules: int | None = None


DecodeFn = Callable[[np.ndarray], list[Code]]


def _zxing() -> DecodeFn:
    import zxingcpp

    fmt = zxingcpp.BarcodeFormat.QRCode

    def decode(gray: np.ndarray) -> list[Code]:
        # try_rotate/try_invert off: labels are dark-on-light and QR finder patterns are
        # rotation invariant anyway; try_downscale off: we choose the scale ourselves.
        found = zxingcpp.read_barcodes(gray, formats=fmt, try_rotate=False, try_downscale=False,
                                       try_invert=False)
        out = []
        for bc in found:
            pos = bc.position
            pts = (pos.top_left, pos.top_right, pos.bottom_right, pos.bottom_left)
            out.append(Code(bytes(bc.bytes), tuple((p.x, p.y) for p in pts), _modules(bc)))
        return out

    return decode


def _modules(bc: object) -> int | None:
    """A QR symbol's width in modules, 17 + 4 x version, when zxing-cpp reports the version."""
    extra = getattr(bc, "extra", None)
    version = extra.get("Version") if isinstance(extra, dict) else None
    return 17 + 4 * int(version) if version is not None and str(version).isdigit() else None


def _zbar() -> DecodeFn:
    from pyzbar import pyzbar

    symbols = [pyzbar.ZBarSymbol.QRCODE]

    def decode(gray: np.ndarray) -> list[Code]:
        h, w = gray.shape
        found = pyzbar.decode((np.ascontiguousarray(gray).tobytes(), w, h), symbols=symbols)
        return [Code(bytes(r.data), tuple((p.x, p.y) for p in r.polygon)) for r in found]

    return decode


_DECODERS: dict[str, Callable[[], DecodeFn]] = {"zxing": _zxing, "zbar": _zbar}


class DecoderUnavailable(Exception):
    pass


def make_decoder(name: str) -> tuple[str, DecodeFn]:
    """Resolve `auto|zxing|zbar` to a working decoder; a missing library is a clear error."""
    order = ["zxing", "zbar"] if name == "auto" else [name]
    errors = []
    for n in order:
        try:
            return n, _DECODERS[n]()
        except (ImportError, OSError) as exc:  # pyzbar raises ImportError when libzbar0 is missing
            errors.append(f"{n}: {exc}")
    hint = " (install libzbar0: apt-get install libzbar0)" if "zbar" in order else ""
    raise DecoderUnavailable(f"no QR decoder available: {'; '.join(errors)}{hint}")


class Detector:
    """Crops, scales and decodes; thread-confined to the detector thread."""

    def __init__(self, cfg: DetectorConfig):
        self.cfg = cfg
        self.name, self._decode = make_decoder(cfg.decoder)
        self.last_ms = 0.0

    def detect(self, frame: GrayFrame) -> list[Detection]:
        gray = frame.gray
        h, w = gray.shape
        x0 = y0 = 0
        roi = self.cfg.roi
        if roi is not None:
            x0, y0 = int(roi.left * w), int(roi.top * h)
            gray = gray[y0 : int(roi.bottom * h), x0 : int(roi.right * w)]
        scale = 1.0
        limit = self.cfg.max_width_px
        if limit and gray.shape[1] > limit:
            scale = limit / gray.shape[1]
            # INTER_AREA averages: it keeps thin QR modules instead of aliasing them away
            gray = cv2.resize(gray, (limit, max(1, round(gray.shape[0] * scale))), interpolation=cv2.INTER_AREA)
        started = time.perf_counter()
        codes = self._decode(np.ascontiguousarray(gray))
        self.last_ms = (time.perf_counter() - started) * 1000
        return [
            Detection(
                c.payload,
                tuple((round(x / scale) + x0, round(y / scale) + y0) for x, y in c.polygon),
                frame.t, frame.wall, w, h, self.name, c.modules,
            )
            for c in codes
        ]
