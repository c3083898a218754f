"""A detector that fails on a frame costs that frame only: detection goes on, and the clips whose end the
failed frame passed are still handed to the clip stage (the ring waits for detection to pass a clip's end
before making it, so a frame it never hears of would hold every clip back)."""

from __future__ import annotations

import threading

import numpy as np

from edge_agent.capture.media import GrayFrame, Packet
from edge_agent.config import parse_config
from edge_agent.metrics import Metrics
from edge_agent.pipeline.base import END, Finished, FrameSlot
from edge_agent.pipeline.detect_stage import DetectStage
from edge_agent.pipeline.noreads import NoReads
from edge_agent.pipeline.qr_detector import Detector
from edge_agent.pipeline.ring import RingBuffer
from edge_agent.pipeline.track import SightingLog
from edge_agent.stage import Backpressure
from tests.metric_values import value

FPS = 10


class FailingDetector(Detector):
    """The real detector, failing on every frame as a decoder library bug would."""

    def detect(self, frame: GrayFrame):  # type: ignore[override]
        raise RuntimeError("decoder fault")


def test_a_detector_fault_costs_its_frame_and_still_lets_the_clips_it_passed_go() -> None:
    cfg = parse_config("source:\n  kind: file\n  path: line.mp4\n", env={}, strict_source=False)
    m = Metrics()
    made: list[Finished] = []
    ring = RingBuffer(9.0, 1 << 30, made.append, m)
    frames = FrameSlot(lambda: Backpressure.BLOCK, m)
    stage = DetectStage(cfg, frames, ring, m, lambda action, ev: None, NoReads(cfg, m), SightingLog(9.0),
                        lambda event_id, cid, meta: True)
    stage.detector = FailingDetector(cfg.detector, 1)
    for i in range(4 * FPS):
        ring.offer(Packet(b"\0" * 100, i, i, i % FPS == 0, i / FPS, 1000.0 + i / FPS, stream=None))  # type: ignore[arg-type]
    ring.start_recording("read-before-the-fault", start_t=0.5, end_t=2.0)
    assert made == []  # its packets are in; detection has not passed its end yet
    worker = threading.Thread(target=stage.run)
    worker.start()
    gray = np.zeros((48, 64), np.uint8)
    for i in range(3 * FPS):
        frames.put(GrayFrame(gray, i / FPS, 1000.0 + i / FPS))
    frames.put(END)
    worker.join(timeout=30)
    assert not worker.is_alive()
    assert value(m, "edge_agent_detector_errors_total") == 3 * FPS
    assert [f.key for f in made] == ["read-before-the-fault"]
