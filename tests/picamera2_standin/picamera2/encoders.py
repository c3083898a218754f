"""Stand-in for picamera2.encoders: `H264Encoder` with picamera2's constructor, `output` check and
`firsttimestamp`. The frames it "encodes" are the recorded stream's packets (see picamera2/__init__.py)."""

from .outputs import Output


class Encoder:
    def __init__(self):
        self._output = []
        self._running = False
        self.firsttimestamp = None
        self.size = (0, 0)
        self.format = None

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
        if self._running:
            raise RuntimeError("Encoder already running")
        self._running = True
        self.firsttimestamp = None
        for out in self._output:
            out.start()

    def stop(self):
        if not self._running:
            raise RuntimeError("Encoder already stopped")
        self._running = False
        for out in self._output:
            out.stop()

    def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False):
        for out in self._output:
            out.outputframe(frame, keyframe, timestamp, packet, audio)

    def _timestamp(self, sensor_ns):
        ts = int(sensor_ns / 1000)
        if self.firsttimestamp is None:
            self.firsttimestamp = ts
            return 0
        return ts - self.firsttimestamp


class H264Encoder(Encoder):
    def __init__(self, bitrate=None, repeat=True, iperiod=30, framerate=None, enable_sps_framerate=False,
                 qp=None, profile=None):
        super().__init__()
        self.bitrate = bitrate
        self.repeat = repeat
        self.iperiod = iperiod
        self.framerate = framerate
        self.qp = qp
        self.profile = profile


LibavH264Encoder = H264Encoder
