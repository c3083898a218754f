"""A picamera2 main stream the Pi's H.264 encoder cannot take is refused when the config is checked, with
that Pi's limit; one it takes at a cost (a Pi 5 encodes in software) is warned about. The Pi is the one
`source.picamera2.model` names, and the one the config is loaded on (its device tree); a laptop has none
and says what it could not check."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edge_agent.config import pi_models
from tests.cli_in_process import Cli

PI4 = "Raspberry Pi 4 Model B Rev 1.4"
PI5 = "Raspberry Pi 5 Model B Rev 1.0"


@pytest.fixture
def device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Which board the config is loaded on, as its device tree names it (None: not a Pi)."""
    node = tmp_path / "device-tree-model"
    monkeypatch.setattr(pi_models, "DEVICE_TREE_MODEL", node)

    def board(name: str | None) -> None:
        if name is None:
            node.unlink(missing_ok=True)
        else:
            node.write_bytes(name.encode() + b"\0")  # as the kernel writes it: NUL-terminated

    board(None)
    return board


def _config(tmp_path: Path, width: int, height: int, model: str | None = None, kind: str = "picamera2",
            fps: int = 30) -> Path:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"source:\n  kind: {kind}\n  command: rpicam-vid -t 0 -o -\n  fps: {fps}\n  picamera2:\n"
                   + (f"    model: {model}\n" if model else "")
                   + f"    width: {width}\n    height: {height}\n    lores_width: 640\n    lores_height: 360\n"
                   f"spool:\n  dir: {tmp_path / 'spool'}\n")
    return cfg


def test_a_main_stream_beyond_the_pi4_encoder_is_refused_with_its_limit(tmp_path: Path, device,
                                                                        in_process: Cli) -> None:
    cfg = _config(tmp_path, 2304, 1296, model="pi4")
    res = in_process("config", "validate", str(cfg))
    assert res.returncode == 78, res.stdout + res.stderr
    line = res.stderr.strip()
    assert re.fullmatch(rf"{re.escape(str(cfg))}:\d+:\d+: source\.picamera2: main stream 2304x1296 is beyond the "
                        r"hardware H\.264 encoder of a Raspberry Pi 4 .*at most 1920x1080.*\(source\.picamera2\.model: "
                        r"pi4\)", line), line


def test_the_pi_the_config_is_loaded_on_is_checked_too(tmp_path: Path, device, in_process: Cli) -> None:
    """model auto, or a config written for a Pi 5 that lands on a Pi 4: the Pi it runs on decides."""
    device(PI4)
    for model in (None, "pi5"):
        res = in_process("config", "validate", str(_config(tmp_path, 2304, 1296, model=model)))
        assert res.returncode == 78 and f"(this device: {PI4})" in res.stderr, res.stderr
    assert in_process("run", "-c", str(_config(tmp_path, 2304, 1296))).returncode == 78  # the daemon will not start


@pytest.mark.parametrize(("size", "fits"), [((1920, 1080), True), ((1080, 1920), True), ((1440, 1440), True),
                                            ((1920, 1200), False), ((2048, 1024), False), ((1280, 2160), False)])
def test_the_pi4_encoder_takes_1920_a_side_and_8192_macroblocks(size: tuple[int, int], fits: bool, tmp_path: Path,
                                                                 device, in_process: Cli) -> None:
    res = in_process("config", "validate", str(_config(tmp_path, *size, model="pi4")))
    assert res.returncode == (0 if fits else 78), res.stderr


def test_a_pi5_takes_any_size_and_warns_of_software_encoding(tmp_path: Path, device, in_process: Cli) -> None:
    device(PI5)
    res = in_process("config", "validate", str(_config(tmp_path, 2304, 1296)))
    assert res.returncode == 0, res.stderr
    assert "warning: source.picamera2:" in res.stderr and "libx264 in software" in res.stderr, res.stderr
    assert f"(this device: {PI5})" in res.stderr
    quiet = in_process("config", "validate", str(_config(tmp_path, 1920, 1080)))
    assert quiet.returncode == 0 and "picamera2" not in quiet.stderr, quiet.stderr


def test_a_laptop_says_what_it_could_not_check(tmp_path: Path, device, in_process: Cli) -> None:
    res = in_process("config", "validate", str(_config(tmp_path, 2304, 1296)))
    assert res.returncode == 0, res.stderr
    assert "not a Raspberry Pi" in res.stderr and "set the model" in res.stderr, res.stderr
    assert "picamera2" not in in_process("config", "validate", str(_config(tmp_path, 1920, 1080))).stderr


def test_a_picamera2_section_beside_another_source_refuses_nothing(tmp_path: Path, device, in_process: Cli) -> None:
    device(PI4)
    res = in_process("config", "validate", str(_config(tmp_path, 2304, 1296, kind="pipe")))
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize(("name", "key"), [(PI4, "pi4"), ("Raspberry Pi 400 Rev 1.0", "pi4"),
                                           ("Raspberry Pi Compute Module 4 Rev 1.0", "pi4"), (PI5, "pi5"),
                                           ("Raspberry Pi 500 Rev 1.0", "pi5"),
                                           ("Raspberry Pi Compute Module 5 Rev 1.0", "pi5"),
                                           ("Raspberry Pi 3 Model B Plus Rev 1.3", "pi3"),
                                           ("Raspberry Pi Zero 2 W Rev 1.0", "pi3"),
                                           ("NVIDIA Jetson Orin Nano Developer Kit", None)])
def test_device_tree_names_map_to_the_encoder_they_have(name: str, key: str | None) -> None:
    model = pi_models.model_of(name)
    assert (model.key if model else None) == key
