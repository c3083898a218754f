"""QR detection on grayscale frames, behind one interface over zxing-cpp and zbar.

The detector sees only luma (the Y plane needs no colour conversion), optionally cropped
to a region of interest and downscaled, and reports each code with the capture time of
its *frame* and its outline in full-frame pixel coordinates. It validates nothing: CID
checks happen on the payload it returns, in one place (`cid.py`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from edge_agent.capture.clock import wall_at
from edge_agent.capture.media import GrayFrame
from edge_agent.config import DetectorConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Code:
    """One symbol the decoder found: its payload and outline (x, y) in the decoder's input image.
    `error` is set (and `payload` empty) when it was located but could not be decoded."""

    payload: bytes
    polygon: tuple[tuple[int, int], ...]
    error: str | None = None
    modules: int | None = None  # symbol width in modules (from the QR version), when the decoder says


@dataclass(frozen=True, slots=True)
class Detection:
    payload: bytes
    polygon: tuple[tuple[int, int], ...]  # full-frame pixel coordinates
    t: float  # capture time of the frame it was found in
    mono: float  # the same moment on the monotonic clock (see capture.clock.wall_at)
    frame_width: int
    frame_height: int
    decoder: str  # which decoder read it: zxing, zbar, or a cascade stage (zbar-region, zxing-enlarged, ...)
    modules: int | None = None

    @property
    def wall(self) -> float:
        """Wall-clock time of the capture, on the wall clock as it is now (a step of it applies at once)."""
        return wall_at(self.mono)


@dataclass(frozen=True, slots=True)
class Unread:
    """A QR symbol located in the frame that no decoder of the cascade could read."""

    polygon: tuple[tuple[int, int], ...]  # full-frame pixel coordinates
    error: str  # the first decoder's reason (checksum, format...)


@dataclass(frozen=True, slots=True)
class DetectResult:
    """What one frame gave: the codes read and the symbols located but not read. Iterating it (and
    len()) walks the reads, so callers that only want payloads use it as the list of reads."""

    reads: tuple[Detection, ...]
    unread: tuple[Unread, ...]
    t: float
    mono: float
    frame_width: int
    frame_height: int

    @property
    def wall(self) -> float:
        return wall_at(self.mono)

    def __iter__(self) -> Iterator[Detection]:
        return iter(self.reads)

    def __len__(self) -> int:
        return len(self.reads)


DecodeFn = Callable[..., list[Code]]  # (gray, thorough=True) -> codes


def _zxing(*, return_errors: bool = True) -> DecodeFn:
    import zxingcpp

    fmt = zxingcpp.BarcodeFormat.QRCode
    global_histogram = zxingcpp.Binarizer.GlobalHistogram

    def decode(gray: np.ndarray, thorough: bool = True) -> list[Code]:
        # try_invert: light-on-dark codes (laser-marked parts) are common; try_downscale: small
        # pyramid levels find blurred and oversized codes. Together ~0.4 ms a 720p frame (measured),
        # for 10 points of recall on real photos. try_rotate stays off: QR finder patterns are
        # rotation invariant. return_errors: a located symbol that fails to decode is the cascade's
        # (and the no-read log's) starting point.
        # A quick pass (neither) costs 0.79 ms on a 1080p frame, the thorough one 1.71 ms (measured):
        # the detect stage alternates them (a label is in view for ~10 analysed frames), commands
        # looking at one frame always take the thorough pass.
        found = zxingcpp.read_barcodes(gray, formats=fmt, try_rotate=False, try_downscale=thorough,
                                       try_invert=thorough, return_errors=return_errors)
        if thorough and not any(bc.valid for bc in found):
            # A second binarizer where the first read nothing: LocalAverage (the default) thresholds
            # each small block against its neighbourhood, which photographed codes (large modules,
            # uneven light, print texture) can defeat where one global threshold does not.
            # Reads only (no located-but-unread symbols of its own: the first pass's verdict stands);
            # about a third of the thorough pass's cost, on thorough frames without a read only.
            found = [*found, *zxingcpp.read_barcodes(gray, formats=fmt, try_rotate=False, try_downscale=False,
                                                     try_invert=False, binarizer=global_histogram)]
        out = []
        for bc in found:
            pos = bc.position
            pts = (pos.top_left, pos.top_right, pos.bottom_right, pos.bottom_left)
            poly = tuple((p.x, p.y) for p in pts)
            if bc.valid:
                out.append(Code(bytes(bc.bytes), poly, modules=_modules(bc)))
            else:
                out.append(Code(b"", poly, _error_text(bc.error)))
        return out

    return decode


def _modules(bc: object) -> int | None:
    """A QR symbol's width in modules, 17 + 4 x version, when zxing-cpp reports the version."""
    extra = getattr(bc, "extra", None)
    version = extra.get("Version") if isinstance(extra, dict) else None
    return 17 + 4 * int(version) if version is not None and str(version).isdigit() else None


def _error_text(err: object) -> str:
    """zxing-cpp's error as a short word ("checksum", "format"), without its source location."""
    kind = getattr(err, "type", None)
    name = getattr(kind, "name", None) or str(err).split(" ", 1)[0]
    return name.lower().removesuffix("error") or "unreadable"


def _zbar() -> DecodeFn:
    from pyzbar import pyzbar

    symbols = [pyzbar.ZBarSymbol.QRCODE]

    def decode(gray: np.ndarray, thorough: bool = True) -> list[Code]:  # one pass only: `thorough` unused
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


def _optional(name: str) -> DecodeFn | None:
    try:
        return _DECODERS[name]()
    except (ImportError, OSError):
        return None


def decoder_error(name: str) -> str | None:
    """Why decoder `name` does not load (None: it does), e.g. for the cascade's optional zbar stage."""
    try:
        _DECODERS[name]()
    except (ImportError, OSError) as exc:
        return str(exc)
    return None


Polygon = tuple[tuple[int, int], ...]


def _box(poly: Polygon) -> tuple[int, int, int, int]:
    xs, ys = [p[0] for p in poly], [p[1] for p in poly]
    return min(xs), min(ys), max(xs), max(ys)


def _overlaps(a: Polygon, b: Polygon) -> bool:
    ax0, ay0, ax1, ay1 = _box(a)
    bx0, by0, bx1, by1 = _box(b)
    return ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1


class Cascade:
    """Second chances for a symbol the first decoder located but could not read: zbar on its region,
    then an enlarged, sharpened crop through both decoders. Runs only on such symbols, so a frame of
    readable (or no) codes costs nothing extra. Whatever it reads goes through the same CID check as
    any payload: a second chance is not a looser rule."""

    MARGIN = 0.3  # of the symbol's size, each side: room for the quiet zone and an imprecise outline
    ENLARGE_TO_PX = 360  # the crop is scaled so the symbol is about this wide
    MAX_FACTOR = 4.0

    def __init__(self, zxing: DecodeFn | None, zbar: DecodeFn | None):
        self.zxing = zxing
        self.zbar = zbar

    def read(self, gray: np.ndarray, poly: Polygon) -> tuple[Code, str] | None:
        """(the code in `gray` coordinates, the stage that read it), or None."""
        h, w = gray.shape
        x0, y0, x1, y1 = _box(poly)
        size = max(x1 - x0, y1 - y0, 8)
        m = int(size * self.MARGIN) + 4
        cx0, cy0, cx1, cy1 = max(0, x0 - m), max(0, y0 - m), min(w, x1 + m), min(h, y1 + m)
        if cx1 - cx0 < 8 or cy1 - cy0 < 8:
            return None
        crop = np.ascontiguousarray(gray[cy0:cy1, cx0:cx1])
        if self.zbar is not None:
            got = self._first(self.zbar, crop, 1.0, cx0, cy0)
            if got:
                return got, "zbar-region"
        factor = min(self.MAX_FACTOR, max(1.5, self.ENLARGE_TO_PX / size))
        big = cv2.resize(crop, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)
        soft = cv2.GaussianBlur(big, (0, 0), factor * 0.8)
        sharp = cv2.addWeighted(big, 1.8, soft, -0.8, 0)  # unsharp mask: restores module edges
        for dec, stage in ((self.zxing, "zxing-enlarged"), (self.zbar, "zbar-enlarged")):
            if dec is not None:
                got = self._first(dec, sharp, factor, cx0, cy0)
                if got:
                    return got, stage
        return None

    @staticmethod
    def _first(dec: DecodeFn, img: np.ndarray, factor: float, ox: int, oy: int) -> Code | None:
        for c in dec(img):
            if c.error is None:
                poly = tuple((round(x / factor) + ox, round(y / factor) + oy) for x, y in c.polygon)
                return Code(c.payload, poly)
        return None


class Detector:
    """Crops, scales and decodes; thread-confined to the detector thread."""

    def __init__(self, cfg: DetectorConfig, thorough_every: int = 1):
        """`thorough_every`: 1 runs zxing-cpp's invert and downscale passes on every frame (commands
        looking at one frame); the detect stage passes const.THOROUGH_EVERY, a label staying in view
        for many analysed frames."""
        self.thorough_every = max(1, thorough_every)
        self._frames = 0
        self.cfg = cfg
        self.name, self._decode = make_decoder(cfg.decoder)
        # the cascade needs located-but-unread symbols, which only zxing-cpp reports
        self._cascade = Cascade(self._decode, _optional("zbar")) if self.name == "zxing" else None
        self.last_ms = 0.0

    def detect(self, frame: GrayFrame) -> DetectResult:
        full = frame.gray
        h, w = full.shape
        gray = full
        x0 = y0 = 0
        roi = self.cfg.roi
        if roi is not None:
            x0, y0 = int(roi.left * w), int(roi.top * h)
            gray = gray[y0 : int(roi.bottom * h), x0 : int(roi.right * w)]
        roi_gray = gray
        scale = 1.0
        limit = self.cfg.max_width_px
        if limit and gray.shape[1] > limit:
            scale = limit / gray.shape[1]
            # INTER_AREA averages: it keeps thin QR modules instead of aliasing them away
            gray = cv2.resize(gray, (limit, max(1, round(gray.shape[0] * scale))), interpolation=cv2.INTER_AREA)
        started = time.perf_counter()
        thorough = self._frames % self.thorough_every == 0
        self._frames += 1
        codes = self._decode(gray, thorough=thorough)  # a strided view is fine: zxing-cpp reads row strides
        reads: list[Detection] = []
        unread: list[Unread] = []
        seen: set[bytes] = set()

        def full_poly(poly: Polygon, s: float) -> Polygon:
            return tuple((round(x / s) + x0, round(y / s) + y0) for x, y in poly)

        for c in codes:
            if c.error is None and c.payload not in seen:
                seen.add(c.payload)
                reads.append(Detection(c.payload, full_poly(c.polygon, scale), frame.t, frame.mono, w, h, self.name,
                                       c.modules))
        for c in codes:
            if c.error is None:
                continue
            poly = full_poly(c.polygon, scale)
            if any(_overlaps(poly, r.polygon) for r in reads) or any(_overlaps(poly, u.polygon) for u in unread):
                continue  # the same symbol seen by another pass (inverted, downscaled): one verdict each
            got = None
            if self._cascade is not None:
                # on the full-resolution region of interest: the downscale may be what lost the modules
                got = self._cascade.read(roi_gray, tuple((round(x / scale), round(y / scale)) for x, y in c.polygon))
            if got is None:
                unread.append(Unread(poly, c.error or "unreadable"))
                continue
            code, stage = got
            if code.payload not in seen:
                seen.add(code.payload)
                reads.append(Detection(code.payload, full_poly(code.polygon, 1.0), frame.t, frame.mono, w, h, stage,
                                       code.modules))
        self.last_ms = (time.perf_counter() - started) * 1000
        return DetectResult(tuple(reads), tuple(unread), frame.t, frame.mono, w, h)
