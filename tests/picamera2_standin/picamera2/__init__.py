"""A stand-in for picamera2 (Raspberry Pi OS's python3-picamera2), importable only by tests and
benchmarks that put tests/picamera2_standin on sys.path. It is not picamera2: it keeps the interface and
the behaviour of picamera2 0.3.36 (raspberrypi/picamera2 at 3e6dff0) where the agent depends on them, and
plays a recorded camera instead of a sensor:

- picamera2.py: `Picamera2` with picamera2's job queue and event loop (`dispatch_functions`,
  `capture_request(wait=False)` returning a Job, `wait(job, timeout)`, `cancel_all_and_flush`, `stop` as a
  job queued behind the others, `stop_recording`, `close`), and a camera that can stall;
- job.py: `Job` (a Future underneath: TimeoutError and CancelledError are concurrent.futures');
- request.py: `CompletedRequest` (reference-counted, given back to the camera at zero) and `MappedArray`
  (`write` picks the buffer sync);
- encoders.py, outputs.py: `H264Encoder`, `Output`;
- its imports: libcamera's bindings and simplejpeg, each a stand-in (tests/picamera2_standin/libcamera,
  .../simplejpeg) that the test environment can make fail as the real ones do on a device.

The recording: standin_media.py.
"""

from __future__ import annotations

from concurrent.futures import TimeoutError  # noqa: A004 (picamera2 exports concurrent.futures' TimeoutError)

import libcamera  # noqa: F401 (picamera2's first import: what fails when the bindings are missing or stale)

from .job import CancelledError
from .picamera2 import CAMERAS, Picamera2, wait_for_cameras
from .request import BUFFER_READS, BUFFER_SYNCS, CompletedRequest, MappedArray, requests_held
from .standin_media import prepare_lores

__all__ = ["BUFFER_READS", "BUFFER_SYNCS", "CAMERAS", "CancelledError", "CompletedRequest", "MappedArray",
           "Picamera2", "TimeoutError", "prepare_lores", "requests_held", "wait_for_cameras"]
