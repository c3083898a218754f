"""Photographed QR codes, made harder the way a conveyor camera makes them: the real phone photos of
photos/ (see photos.json for their source and licence), each scaled, defocused, lit darker or
brighter and JPEG-compressed over a fixed grid. Deterministic: the same images every run.

The photos themselves are real; the degradations are synthetic (OpenCV resize, Gaussian blur, a
gamma curve, JPEG at two qualities).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

PHOTOS = Path(__file__).resolve().parent / "photos"
SCALES = (0.6, 0.8, 1.0, 1.5, 2.0)  # of the 240x240 photo: smaller and larger codes
BLURS = (0.0, 0.8, 1.5)  # Gaussian sigma, pixels: focus
GAMMAS = (0.5, 1.0, 2.0)  # <1 brighter (washed out), >1 darker (under-exposed)
QUALITIES = (20, 90)  # JPEG quality


def degrade(gray: np.ndarray, scale: float, blur: float, gamma: float, quality: int) -> np.ndarray:
    img = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    if blur:
        img = cv2.GaussianBlur(img, (0, 0), blur)
    img = (255 * (img / 255.0) ** gamma).astype(np.uint8)
    return cv2.imdecode(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], cv2.IMREAD_GRAYSCALE)


def manifest() -> dict:
    return json.loads((PHOTOS / "photos.json").read_text(encoding="utf-8"))


def images() -> Iterator[tuple[str, tuple[float, float, float, int], str, np.ndarray]]:
    """(photo file, (scale, blur, gamma, quality), payload, grey image) over the whole grid."""
    for p in manifest()["photos"]:
        gray = cv2.imread(str(PHOTOS / p["file"]), cv2.IMREAD_GRAYSCALE)
        for params in itertools.product(SCALES, BLURS, GAMMAS, QUALITIES):
            yield p["file"], params, p["payload"], degrade(gray, *params)
