"""Which H.264 encoders this PyAV build has, and how each is set up.

One default list (const.ENCODERS) serves every machine, so the docs do not depend on where they
were generated; an encoder this build lacks altogether (the aarch64 wheel has no h264_nvenc) is
skipped without a warning, and NVENC is skipped the same way where the NVIDIA driver's encode
library is absent, since it can never open there. Encoders that exist but fail to open (no
/dev/video11 for h264_v4l2m2m) are still tried once and warned about: that may be a fault.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from collections.abc import Sequence

import av

log = logging.getLogger(__name__)


@functools.cache
def usable(name: str) -> bool:
    """False when `name` can never open here: not in this FFmpeg build, or its driver is missing."""
    try:
        av.codec.Codec(name, "w")
    except av.codec.codec.UnknownCodecError:
        log.debug("encoder not in this build, skipped encoder=%s", name)
        return False
    if "nvenc" in name:
        try:
            ctypes.CDLL("libnvidia-encode.so.1")
        except OSError:
            log.debug("encoder needs the NVIDIA driver, absent here, skipped encoder=%s", name)
            return False
    return True


def none_usable(names: Sequence[str]) -> str | None:
    """A warning when no encoder of `names` (clip.encoders) can ever open here, else None: every clip that
    must be re-encoded would go out without video. `config validate` and `check` both say it."""
    if any(usable(n) for n in names):
        return None
    hint = " (add libx264, which this build has)" if usable("libx264") else ""
    return (f"clip.encoders: none of {', '.join(names)} exists in this build or has its driver here; clips that "
            "must be re-encoded (clip.width/height/fps, clip.reencode, a camera that is not H.264, a remux that "
            f"fails) would go out without video{hint}")


def configure(cc: av.CodecContext, name: str, width: int, height: int, fps: float, *,
              preset: str, crf: int | None, tune: str | None = "zerolatency") -> None:
    """Rate control and a keyframe every second (clips cut from this video stay tight)."""
    cc.gop_size = max(1, round(fps))
    if name == "libx264":
        options = {"preset": preset}
        if crf is not None:
            options["crf"] = str(crf)
        if tune:
            options["tune"] = tune
        cc.options = options
    else:
        # hardware encoders take a bitrate, not a CRF: ~0.1 bit per pixel per frame is H.264's sweet spot
        cc.bit_rate = int(width * height * fps * 0.1)
