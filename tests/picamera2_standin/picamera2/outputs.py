"""Stand-in for picamera2.outputs: the `Output` base class, as picamera2 defines it."""


class Output:
    """Handles output functionality of encoders (picamera2's contract: `outputframe` per encoded frame)."""

    def __init__(self, pts=None):
        self.recording = False
        self.ptsoutput = pts
        self.needs_pacing = False

    def start(self):
        self.recording = True

    def stop(self):
        self.recording = False

    def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False):
        """One encoded frame: bytes, whether it is a keyframe, microseconds since the encoder's first frame."""

    def outputtimestamp(self, timestamp):
        pass

    def _add_stream(self, encoder_stream, *args, **kwargs):
        pass
