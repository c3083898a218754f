"""Which Raspberry Pi a picamera2 camera runs on, and what its H.264 encoder takes.

picamera2's `H264Encoder` is two different encoders (picamera2/encoders/__init__.py picks by platform):

- VideoCore (Pi 4, 400, CM4, Pi 3, Zero 2 W and older): the hardware encoder behind V4L2
  (bcm2835-codec). Its driver takes at most 1920 pixels a side (MAX_W_CODEC, MAX_H_CODEC), and it is an
  H.264 level 4 encoder: at most 8192 16x16 macroblocks a frame (1920x1088: 8160; 2304x1296 fails at
  VIDIOC_STREAMON, raspberrypi/picamera2 issue 753), rated for 245,760 macroblocks a second (level 4.0:
  1080p30; picamera2 asks for level 4.2 above that, which the block reaches only "with luck").
- Pi 5, 500, CM5 (PiSP): no H.264 encoder. picamera2 gives `LibavH264Encoder` under the same name: libx264
  in software, run by picamera2's camera thread for every frame, in the agent's process. Any size
  encodes; the cost grows with the macroblocks a second, and a frame the thread cannot encode in time
  holds back the camera.

A Pi names itself in the device tree (/proc/device-tree/model, e.g. "Raspberry Pi 4 Model B Rev 1.4");
`source.picamera2.model` names the Pi a config is written for, so a laptop can check it too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# The device tree's name for the board; read where the config is loaded. Tests point it elsewhere.
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")

ENCODER_MAX_SIDE = 1920  # bcm2835-codec: MAX_W_CODEC, MAX_H_CODEC
ENCODER_MAX_MACROBLOCKS = 8192  # H.264 level 4.x MaxFS
RATED_MACROBLOCKS_S = 245_760  # H.264 level 4.0 MaxMBPS: 1920x1080 at 30 fps
PICAMERA2_FPS = 30.0  # the frame rate a picamera2 camera runs at when source.fps is empty


@dataclass(frozen=True)
class PiModel:
    key: str  # what source.picamera2.model says
    name: str  # for people
    hardware_h264: bool


MODELS = {
    "pi3": PiModel("pi3", "Raspberry Pi 3 (or Zero 2 W, CM3, older)", True),
    "pi4": PiModel("pi4", "Raspberry Pi 4 (or 400, CM4)", True),
    "pi5": PiModel("pi5", "Raspberry Pi 5 (or 500, CM5)", False),
}


def read_device_model(path: Path | None = None) -> str | None:
    """The board's name from the device tree, or None (not a Pi or not Linux: a laptop)."""
    try:
        text = (path or DEVICE_TREE_MODEL).read_bytes()
    except OSError:
        return None
    return text.rstrip(b"\0").decode("utf-8", "replace").strip() or None


def model_of(device: str | None) -> PiModel | None:
    """The model family of a device-tree name; None for anything that is not a Raspberry Pi we know."""
    m = re.match(r"Raspberry Pi (?:Compute Module )?(\d|Zero|Model)", device or "")
    if m is None:
        return None
    first = m[1]
    if first in ("Zero", "Model") or first in "123":
        return MODELS["pi3"]
    return {"4": MODELS["pi4"], "5": MODELS["pi5"]}.get(first)


def _macroblocks(width: int, height: int) -> int:
    return ((width + 15) // 16) * ((height + 15) // 16)


def encoder_refusal(model: PiModel, width: int, height: int) -> str | None:
    """Why `model`'s H.264 encoder cannot take a width x height main stream, or None."""
    if not model.hardware_h264:
        return None
    if (width <= ENCODER_MAX_SIDE and height <= ENCODER_MAX_SIDE
            and _macroblocks(width, height) <= ENCODER_MAX_MACROBLOCKS):
        return None
    return (f"main stream {width}x{height} is beyond the hardware H.264 encoder of a {model.name}: at most "
            f"1920x1080 ({ENCODER_MAX_SIDE} pixels a side, {ENCODER_MAX_MACROBLOCKS} 16x16 macroblocks a frame; "
            f"this is {_macroblocks(width, height)}), picamera2 cannot start it")


def encoder_warning(model: PiModel, width: int, height: int, fps: float) -> str | None:
    """What a main stream costs on `model` when it is allowed but beyond what the encoder is made for."""
    if _macroblocks(width, height) * fps <= RATED_MACROBLOCKS_S or encoder_refusal(model, width, height):
        return None
    if model.hardware_h264:
        return (f"main stream {width}x{height} at {fps:g} fps is beyond what the hardware H.264 encoder of a "
                f"{model.name} is rated for (1080p30, {RATED_MACROBLOCKS_S} macroblocks a second): expect dropped "
                f"frames")
    return (f"on a {model.name} picamera2's H264Encoder is libx264 in software, run by picamera2's camera thread "
            f"for every frame: main stream {width}x{height} at {fps:g} fps is beyond 1080p30 ({RATED_MACROBLOCKS_S} "
            f"macroblocks a second) and competes with detection for the CPU; the camera drops frames when it falls "
            f"behind (1920x1080 at 30 fps or less keeps it light)")


def models_to_check(configured: str, device: str | None) -> list[tuple[PiModel, str]]:
    """The models a main stream is checked against, each with where it came from: the one the config
    names, and this device's when it is a Pi. Both when they differ: a config written for one Pi and run
    on another must fit the one it runs on."""
    out = [(MODELS[configured], f"source.picamera2.model: {configured}")] if configured in MODELS else []
    found = model_of(device)
    if found is not None and all(m.key != found.key for m, _ in out):
        out.append((found, f"this device: {device}"))
    return out


def picamera2_refusal(configured: str, width: int, height: int, device: str | None) -> str | None:
    """The schema's check: the first model checked whose encoder cannot take the main stream."""
    for model, where in models_to_check(configured, device):
        refusal = encoder_refusal(model, width, height)
        if refusal:
            return f"{refusal} ({where})"
    return None


def picamera2_warnings(model: str, width: int, height: int, fps: float | None,
                       device: str | None = None) -> list[str]:
    """What `config validate` and the source's start say about a valid picamera2 main stream (source.picamera2's
    model, width and height; source.fps): its cost on the models checked, or, where no model is known (a
    laptop, model auto), that nothing was checked although a Pi 4 or older would refuse it. `device`: the
    device tree's name, read when not given."""
    device = read_device_model() if device is None else device
    fps = fps or PICAMERA2_FPS
    checked = models_to_check(model, device)
    notes = [f"source.picamera2: {w} ({where})" for m, where in checked
             if (w := encoder_warning(m, width, height, fps))]
    if not checked and encoder_refusal(MODELS["pi4"], width, height):
        notes.append(f"source.picamera2: main stream {width}x{height} is beyond the hardware H.264 encoder of "
                     f"a Pi 4 or older (at most 1920x1080); this machine is not a Raspberry Pi and "
                     f"source.picamera2.model is auto, so it was not checked: set the model (pi3, pi4, pi5) to check "
                     f"it for the device")
    return notes
