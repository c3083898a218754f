"""The agent's threads carry their stage's name in the kernel, so `top -H` tells an operator which stage
takes the CPU (and benchmarks/live_benchmark.py prints CPU by stage from the same names)."""

from __future__ import annotations

import threading
from pathlib import Path

from edge_agent.stage import FailureBox, StageThread


class Waiting:
    name = "decode"

    def __init__(self) -> None:
        self.running = threading.Event()
        self.comm = ""
        self.release = threading.Event()

    def run(self) -> None:
        self.comm = Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()
        self.running.set()
        self.release.wait(10)

    def status(self) -> None:
        return None


def test_a_stage_thread_has_its_stage_name_in_the_kernel() -> None:
    stage = Waiting()
    thread = StageThread(stage, None, FailureBox())
    thread.start()
    assert stage.running.wait(10)
    stage.release.set()
    assert thread.join(10)
    assert stage.comm == "decode"
