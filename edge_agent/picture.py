"""Figures of a grayscale picture that say whether a code in it can be read: sharpness, exposure, pixels
per QR module. Pure functions on numpy arrays, shared by the detect stage (each clip's quality figures,
pipeline/track.py) and what a technician sees (inspection.py: snapshot, tune, the live view), so both
measure the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np


def sharpness(gray: np.ndarray) -> float:
    return float(cv2.Laplacian(gray, cv2.CV_64F).var()) if gray.size else 0.0


# exposure() counts a grid of about this many pixels, every n-th pixel of every n-th row: a mean and two
# fractions need no more (+-0.5 % on a 1080p frame), and the detect stage computes them for every
# analysed frame with a code in it. Measured: every 3rd pixel of every 3rd row of a 720p frame 0.09 ms,
# every 4th of a 1080p one 0.12 ms; whole rows instead (every 2nd of a 720p frame) 0.7 ms.
EXPOSURE_SAMPLES = 130_000
_LEVELS = np.arange(256, dtype=np.float64)


def exposure(gray: np.ndarray) -> tuple[float, float, float]:
    """(mean luma, fraction of pixels under 5, fraction over 250) of a frame."""
    if not gray.size:
        return 0.0, 0.0, 0.0
    step = max(1, round(math.sqrt(gray.size / EXPOSURE_SAMPLES)))
    # a strided view: OpenCV copies the ~130k pixels it counts, not the frame
    hist = cv2.calcHist([gray[::step, ::step]], [0], None, [256], [0, 256]).ravel()
    n = float(hist.sum())
    return float(hist @ _LEVELS) / n, float(hist[:5].sum()) / n, float(hist[251:].sum()) / n


def code_figures(gray: np.ndarray, polygon: Sequence[tuple[int, int]],
                 modules: int | None) -> tuple[float | None, float]:
    """(pixels per module, sharpness of the code's box) of one code in a frame: the mean side of its
    outline over its width in modules (None when the decoder gave no version), and the variance of
    the Laplacian of its bounding box."""
    poly = list(polygon)
    side = np.mean([math.dist(poly[i], poly[(i + 1) % len(poly)]) for i in range(len(poly))])
    xs, ys = [q[0] for q in poly], [q[1] for q in poly]
    crop = gray[max(0, min(ys)) : max(ys), max(0, min(xs)) : max(xs)]
    return (round(float(side) / modules, 2) if modules else None), sharpness(crop)
