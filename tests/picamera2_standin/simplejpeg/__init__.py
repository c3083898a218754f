"""Stand-in for simplejpeg, the JPEG codec picamera2 imports at its own import (picamera2/request.py and
picamera2/encoders/jpeg_encoder.py both `import simplejpeg`).

On Raspberry Pi OS it is the system's python3-simplejpeg, a compiled extension built against the
system's numpy (1.24 on bookworm). Run under a numpy 2.x its module initialisation fails with a
ValueError, not an ImportError (raspberrypi/picamera2 issues 1088, 1170, 1211). The test environment
says which numpy the "system's" simplejpeg was built for with `PICAMERA2_STANDIN_SIMPLEJPEG_NUMPY`
(a major version); unset, it matches the running numpy.
"""

from __future__ import annotations

import os

import numpy

_BUILT_FOR = os.environ.get("PICAMERA2_STANDIN_SIMPLEJPEG_NUMPY")
_RUNNING = int(numpy.__version__.split(".")[0])

# numpy 2 changed the size of its dtype struct; an extension built on numpy 1 headers checks it when it
# loads (numpy 2 builds run on numpy 1, not the other way round)
if _BUILT_FOR is not None and int(_BUILT_FOR) < 2 <= _RUNNING:
    raise ValueError("numpy.dtype size changed, may indicate binary incompatibility. "
                     "Expected 96 from C header, got 88 from PyObject")


def encode_jpeg(*args: object, **kwargs: object) -> bytes:
    raise NotImplementedError("the picamera2 stand-in encodes no JPEG")
