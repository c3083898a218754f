"""The whole pipeline reads the codes a plain decoder misses: light-on-dark (laser-marked) labels and
labels of 2 to 3 pixels per module, rendered into H.264 video by the hard-code sample generator; and
nothing it reads is outside the sample (no false CID)."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from edge_agent.config import parse_config
from edge_agent.delivery.sinks import FolderSink
from edge_agent.pipeline.events import EventSnapshot
from edge_agent.pipeline.wiring import Pipeline

ROOT = Path(__file__).resolve().parent.parent


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_hard_codes", ROOT / "sample_media" / "make_hard_codes.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_inverted_and_small_codes_are_read_through_the_pipeline(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    gen = generator()
    # the labels as the sample has them (in view as long, encoded alike) with less empty video between them
    monkeypatch.setattr(gen, "GAP_S", 0.2)
    manifest = gen.make(tmp_path / "sample", only={"inverted", "small"})
    expected = {p for ps in manifest["categories"].values() for p in ps}
    assert {a["px_per_module"] for a in manifest["appearances"] if a["category"] == "small"} == {3.0, 2.5, 2.0}
    video = tmp_path / "sample" / gen.VIDEO
    cfg = parse_config(f"source:\n  kind: file\n  path: {video}\nclip:\n  pre_roll_s: 0.5\n  post_roll_s: 0.5\n"
                       f"spool:\n  dir: {tmp_path / 'spool'}\n", env={})
    heard: list[EventSnapshot] = []
    noreads: list[object] = []
    pipeline = Pipeline(cfg, FolderSink(tmp_path / "clips"), videos=[str(video)], on_event=heard.append,
                        on_noread=noreads.append)
    started = time.monotonic()
    pipeline.start()
    assert pipeline.wait(120), "replay did not finish"
    took = time.monotonic() - started
    assert {e.cid for e in heard} == expected, f"read {sorted(e.cid for e in heard)} in {took:.1f} s"
    assert len(heard) == len(expected)  # one event per label
    assert noreads == []  # every located symbol was read


def photo_set() -> ModuleType:
    spec = importlib.util.spec_from_file_location("photo_set", ROOT / "sample_media" / "photo_set.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_photographed_code_local_thresholding_misses_is_read_with_a_global_histogram() -> None:
    """A real phone photo of a QR code, shrunk, defocused, washed out and JPEG'd: zxing-cpp's default
    binarizer, its invert and downscale passes, and the zbar/enlarged cascade read nothing; the
    GlobalHistogram pass on a frame where nothing was read does."""
    import cv2
    import numpy as np

    from edge_agent.capture.media import GrayFrame
    from edge_agent.config import DetectorConfig
    from edge_agent.pipeline.qr_detector import Detector

    photos = photo_set()
    entry = next(p for p in photos.manifest()["photos"] if p["file"] == "zxing-android1-qrcode-1.jpg")
    gray = photos.degrade(cv2.imread(str(photos.PHOTOS / entry["file"]), cv2.IMREAD_GRAYSCALE), 0.6, 1.5, 0.5, 20)
    det = Detector(DetectorConfig())
    assert [d.payload.decode() for d in det.detect(GrayFrame(np.ascontiguousarray(gray), 0.0, 0.0))] == \
        [entry["payload"]]
