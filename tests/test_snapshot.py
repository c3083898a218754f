"""`snapshot` writes a picture showing the codes found (valid in green, rejected in red, the ROI in
blue) and prints code size, sharpness, exposure and advice; `tune` repeats the figures.

The commands run in this process through the CLI's own entry point: what they print and return is
what a shell sees (exit codes as a real process are pinned in test_exit_codes.py), without an
interpreter start and the media libraries' import for each."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.cli_in_process import Cli
from tests.media_factory import qr_image

SAMPLES = Path(__file__).resolve().parent.parent / "sample_media"


def colour_pixels(img: np.ndarray, bgr: tuple[int, int, int]) -> int:
    return int(np.all(np.abs(img.astype(int) - np.array(bgr)) < 30, axis=2).sum())


@pytest.mark.slow
@pytest.mark.parametrize("video", ["conveyor_720p30.mp4", "conveyor_1080p30.mp4", "invalid_payload_720p30.mp4"])
def test_snapshot_of_each_sample_shows_the_codes(video: str, tmp_path: Path, in_process: Cli) -> None:
    out = tmp_path / "shot.jpg"
    res = in_process("snapshot", "--source", str(SAMPLES / video), "-o", str(out))
    assert res.returncode == 0, res.stderr
    img = cv2.imread(str(out))
    assert img is not None and colour_pixels(img, (40, 200, 40)) > 200  # a green outline
    assert "px/module" in res.stdout and "sharpness" in res.stdout and "advice:" in res.stdout


def test_snapshot_marks_a_rejected_payload_in_red(tmp_path: Path, in_process: Cli) -> None:
    out = tmp_path / "bad.jpg"
    res = in_process("snapshot", "--source", str(SAMPLES / "invalid_payload_720p30.mp4"), "--at", "8", "-o", str(out))
    assert res.returncode == 0, res.stderr
    assert 'REJECTED "../../etc/passwd"' in res.stdout
    assert "is not a valid CID" in res.stdout
    assert colour_pixels(cv2.imread(str(out)), (40, 40, 230)) > 200


def test_snapshot_of_a_photo_with_a_small_code_advises_moving_closer(tmp_path: Path, in_process: Cli) -> None:
    photo = tmp_path / "photo.png"
    img = np.full((720, 1280), 170, np.uint8)
    q = qr_image("CID-SMALL-1", 2)  # 2 px per module: readable, but marginal
    img[300 : 300 + q.shape[0], 600 : 600 + q.shape[1]] = q
    cv2.imwrite(str(photo), img)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("detector:\n  roi: {left: 0.25, top: 0.25, right: 0.75, bottom: 0.75}\n")
    res = in_process("snapshot", "--config", str(cfg), "--source", str(photo), "-o", str(tmp_path / "s.jpg"))
    assert res.returncode == 0, res.stderr
    assert "2.0 px/module" in res.stdout and "move closer" in res.stdout
    assert colour_pixels(cv2.imread(str(tmp_path / "s.jpg")), (230, 120, 30)) > 200  # the ROI


def test_snapshot_of_a_dark_frame_without_codes_gives_advice(tmp_path: Path, in_process: Cli) -> None:
    photo = tmp_path / "dark.png"
    cv2.imwrite(str(photo), np.full((480, 640), 20, np.uint8))
    res = in_process("snapshot", "--source", str(photo), "-o", str(tmp_path / "d.jpg"))
    assert "no code found" in res.stdout and "image is dark" in res.stdout


def test_tune_prints_a_line_per_second_of_video(in_process: Cli) -> None:
    res = in_process("tune", "--source", str(SAMPLES / "conveyor_720p30.mp4"), "--count", "5")
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("t=")]
    assert res.returncode == 0 and len(lines) == 5
    assert any("CID-7F3A9C21" in ln for ln in lines[3:])


@pytest.mark.slow
def test_sharpness_comes_with_its_scale_and_at_on_a_camera_says_it_does_not_apply(tmp_path: Path,
                                                                                    in_process: Cli) -> None:
    res = in_process("snapshot", "--source", str(SAMPLES / "conveyor_720p30.mp4"), "-o", str(tmp_path / "a.jpg"))
    assert "(sharp: under 50 blurry, 300 and over sharp)" in res.stdout
    assert "for the whole image (scene-dependent" in res.stdout
    camera = f"{sys.executable} {SAMPLES.parent / 'tests' / 'stream_sample.py'} {SAMPLES / 'conveyor_720p30.mp4'}"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"source:\n  kind: pipe\n  command: {camera}\n", encoding="utf-8")
    res = in_process("snapshot", "--config", str(cfg), "--at", "5", "-o", str(tmp_path / "b.jpg"))
    assert res.returncode == 0, res.stderr
    assert "--at applies to files; pipe sources give the newest frame" in res.stderr


def test_exposure_is_the_frames_mean_and_its_dark_and_bright_fractions() -> None:
    """Measured on a sample of whole rows: the figures a frame's every pixel gives, within half a percent,
    on a contiguous frame and on a decoder's padded plane (a strided view)."""
    from edge_agent.picture import exposure

    rng = np.random.default_rng(7)
    frame = rng.integers(0, 256, (1080, 1920), dtype=np.uint8)
    frame[:270] = 0  # a dark quarter
    frame[270:400, :960] = 255  # a bright band
    # bands on each side of both thresholds: 4 is dark and 5 is not, 251 is bright and 250 is not
    frame[400:500], frame[500:600], frame[600:700], frame[700:800] = 4, 5, 250, 251
    padded = np.zeros((1080, 2048), np.uint8)
    padded[:, :1920] = frame
    truth = (frame.mean(), (frame < 5).mean(), (frame > 250).mean())
    for gray in (frame, padded[:, :1920]):
        mean, dark, bright = exposure(gray)
        assert mean == pytest.approx(truth[0], rel=0.005)
        assert dark == pytest.approx(truth[1], abs=0.005) and bright == pytest.approx(truth[2], abs=0.005)
    assert exposure(np.zeros((0, 0), np.uint8)) == (0.0, 0.0, 0.0)
    assert exposure(np.full((2, 3), 255, np.uint8)) == (255.0, 0.0, 1.0)
