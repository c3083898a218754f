"""Stand-in for libcamera's Python bindings (Raspberry Pi OS's python3-libcamera), only as far as the
picamera2 stand-in uses them at import: `Transform` and `ColorSpace` default arguments in its class body,
as picamera2.py has them.

`PICAMERA2_STANDIN_LIBCAMERA` makes the import fail as the real bindings do on a device (the test
environment sets it; nothing in the agent does):

- `absent`: not on the path (a virtualenv made without --system-site-packages):
  ModuleNotFoundError "No module named 'libcamera'" (raspberrypi/picamera2 issue 22);
- `mismatched`: the bindings built against another libcamera than the one installed: ImportError
  "libcamera.so.0.4: cannot open shared object file" (raspberrypi/libcamera issue 277);
- `older`: bindings older than the picamera2 that imports them: `ColorSpace` has no `Sycc`, so
  picamera2's class body raises AttributeError (raspberrypi/picamera2 issue 295);
- `unloadable`: a native library loaded through ctypes that is missing: OSError, as ctypes.CDLL raises it.
"""

from __future__ import annotations

import os

_MODE = os.environ.get("PICAMERA2_STANDIN_LIBCAMERA", "")

if _MODE == "absent":
    raise ModuleNotFoundError("No module named 'libcamera'", name="libcamera")
if _MODE == "mismatched":
    raise ImportError("libcamera.so.0.4: cannot open shared object file: No such file or directory")
if _MODE == "unloadable":
    raise OSError("libpisp.so.1: cannot open shared object file: No such file or directory")


class Transform:
    def __init__(self, hflip: int = 0, vflip: int = 0, transpose: int = 0):
        self.hflip, self.vflip, self.transpose = hflip, vflip, transpose


class ColorSpace:
    def __init__(self, name: str):
        self.name = name

    @staticmethod
    def Smpte170m() -> ColorSpace:  # noqa: N802 (libcamera's name)
        return ColorSpace("Smpte170m")

    @staticmethod
    def Rec709() -> ColorSpace:  # noqa: N802
        return ColorSpace("Rec709")


if _MODE != "older":
    ColorSpace.Sycc = staticmethod(lambda: ColorSpace("Sycc"))  # type: ignore[attr-defined]
