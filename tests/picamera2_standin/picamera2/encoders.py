"""Stand-in for picamera2.encoders: `Encoder` with picamera2's `start`/`stop`/`encode`/`outputframe`,
`output` check and `firsttimestamp`, and `H264Encoder` with its constructor. The frames it "encodes" are
the recorded stream's packets (standin_media.py).

As in picamera2 0.3.36 (picamera2/encoders/encoder.py): `encode(stream, request)` runs on the camera's
event loop (Picamera2.process_requests, holding Picamera2.lock) and takes the encoder's own lock; `stop`
takes that lock too; the timestamp is the request's SensorTimestamp in microseconds since the encoder's
first frame.

`PICAMERA2_STANDIN_ENCODER_HANGS_AFTER=N` (the test environment's): after N frames `encode` waits for an
input buffer the hardware never gives back, as V4L2Encoder._encode waits in `buf_available.get()` with no
timeout (an encoder that froze, raspberrypi/picamera2 issue 1228): the event loop, and `stop`, hang with it.
"""

from __future__ import annotations

import os
import queue
import threading

from .outputs import Output


class Encoder:
    def __init__(self):
        self._output = []
        self._running = False
        self._lock = threading.Lock()
        self.firsttimestamp = None
        self.name = None
        self.size = (0, 0)
        self.format = None
        self.frames_encoded = 0
        hang = os.environ.get("PICAMERA2_STANDIN_ENCODER_HANGS_AFTER")
        self._hang_after = int(hang) if hang else None
        self._buf_available: queue.SimpleQueue[int] = queue.SimpleQueue()

    @property
    def running(self):
        return self._running

    @property
    def output(self):
        return self._output[0] if len(self._output) == 1 else self._output

    @output.setter
    def output(self, value):
        if isinstance(value, list):
            for out in value:
                if not isinstance(out, Output):
                    raise RuntimeError("Must pass Output")
        elif isinstance(value, Output):
            value = [value]
        else:
            raise RuntimeError("Must pass Output")
        self._output = value

    def start(self, quality=None):
        with self._lock:
            if self._running:
                raise RuntimeError("Encoder already running")
            self.frames_encoded = 0
            self._running = True
            self.firsttimestamp = None
            for out in self._output:
                out.start()

    def stop(self):
        with self._lock:
            if not self._running:
                raise RuntimeError("Encoder already stopped")
            self._running = False
            for out in self._output:
                out.stop()

    def encode(self, stream, request):
        with self._lock:
            if not self._running:
                return
            self._encode(stream, request)
        self.frames_encoded += 1

    def _encode(self, stream, request):
        if self._hang_after is not None and self.frames_encoded >= self._hang_after:
            self._buf_available.get()  # the hardware never returns a buffer
        timestamp_us = self._timestamp(request)
        data, keyframe = request.picam2.recording.packet(request.frame)
        self.outputframe(data, keyframe, timestamp_us)

    def standin_unhang(self):
        """Give a hung encoder its buffer back (a test's teardown)."""
        self._hang_after = None
        self._buf_available.put(0)

    def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False):
        for out in self._output:
            out.outputframe(frame, keyframe, timestamp, packet, audio)

    def _timestamp(self, request):
        ts = int(request.get_metadata()["SensorTimestamp"] / 1000)  # ns to us
        if self.firsttimestamp is None:
            self.firsttimestamp = ts
            return 0
        return ts - self.firsttimestamp


class H264Encoder(Encoder):
    def __init__(self, bitrate=None, repeat=True, iperiod=None, framerate=None, enable_sps_framerate=False,
                 qp=None, profile=None):
        super().__init__()
        self.bitrate = bitrate
        self.repeat = repeat
        self.iperiod = iperiod
        self.framerate = framerate
        self.qp = qp
        self.profile = profile


LibavH264Encoder = H264Encoder
