"""Both decoders behind one interface find the code and report its outline in full-frame pixels,
through a region of interest and a downscale, with the frame's capture time."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.capture.media import GrayFrame
from edge_agent.config import DetectorConfig, RoiConfig
from edge_agent.pipeline.qr_detector import Detector
from tests.media_factory import qr_image


def frame_with_code(x: int, y: int, w: int = 2560, h: int = 1440) -> tuple[GrayFrame, int]:
    img = np.full((h, w), 150, np.uint8)
    q = qr_image("CID-DET-1", 8)
    img[y : y + q.shape[0], x : x + q.shape[1]] = q
    return GrayFrame(img, t=12.5, mono=1_800_000_012.5), q.shape[0]


@pytest.mark.parametrize("decoder", ["zxing", "zbar", "auto"])
@pytest.mark.parametrize("roi", [None, RoiConfig(left=0.5, top=0.25, right=1.0, bottom=1.0)])
def test_code_found_with_full_frame_outline(decoder: str, roi: RoiConfig | None) -> None:
    frame, size = frame_with_code(1600, 700)
    det = Detector(DetectorConfig(decoder=decoder, roi=roi, max_width_px=1280))
    (d,) = det.detect(frame)
    assert d.payload == b"CID-DET-1" and d.t == 12.5 and d.mono == 1_800_000_012.5
    assert (d.frame_width, d.frame_height) == (2560, 1440)
    xs, ys = [p[0] for p in d.polygon], [p[1] for p in d.polygon]
    quiet = 4 * 8  # the 4-module quiet zone around the code
    assert abs(min(xs) - (1600 + quiet)) <= 12 and abs(min(ys) - (700 + quiet)) <= 12
    assert abs(max(xs) - (1600 + size - quiet)) <= 16
    assert d.decoder == ("zxing" if decoder == "auto" else decoder)


def test_code_outside_the_roi_is_ignored() -> None:
    frame, _ = frame_with_code(100, 100)
    det = Detector(DetectorConfig(roi=RoiConfig(left=0.5, top=0.5, right=1.0, bottom=1.0)))
    result = det.detect(frame)
    assert list(result) == [] and result.unread == ()
