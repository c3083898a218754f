"""A saved config file changes every key the schema marks live on a running daemon, and every part that
uses the key runs on the new value: the keys come from the schema, the parts from their registrations
with the composition root, so a live key nobody takes, or a part that misses a change, fails here.
The live view is checked by what it does too: the new CID rule and the ROI drawn on its picture."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

from edge_agent.app import Agent
from edge_agent.config import Config, load_config
from edge_agent.config.live import covers, live_keys, reload_marks
from edge_agent.service.daemon import Daemon
from edge_agent.service.http import access_for
from tests.receiver_fixture import free_port

SAMPLE = Path(__file__).resolve().parent.parent / "sample_media" / "conveyor_720p30.mp4"


def new_values(tmp: Path) -> dict[str, Any]:
    """A changed value for every live key (the defaults are the old ones)."""
    token = tmp / "token"
    token.write_text("s3cret\n")
    token.chmod(0o600)  # a secret file must be private, or the agent refuses it
    return {
        "device_id": "line-7", "site": "hall 2", "log_level": "DEBUG",
        "source.stall_s": 42.0,
        "detector.decoder": "zbar", "detector.cid_pattern": "^LOT-[0-9]+$", "detector.cid_max_length": 40,
        "detector.cooldown_s": 2.0, "detector.rate_hz": 4.0, "detector.max_blind_s": 0.3, "detector.max_width_px": 640,
        "detector.roi": {"left": 0.5, "top": 0.0, "right": 1.0, "bottom": 1.0},
        "clip.pre_roll_s": 1.0, "clip.post_roll_s": 1.5, "clip.extend_while_in_view": True, "clip.max_s": 20.0,
        "clip.encoders": ["libx264"], "clip.width": 640, "clip.height": 360, "clip.fps": 15.0, "clip.crf": 30,
        "clip.preset": "veryfast",
        "upload.url": "http://127.0.0.1:9/cid", "upload.token_file": str(token), "upload.ca_file": str(tmp / "ca.pem"),
        "upload.cert_file": str(tmp / "cert.pem"), "upload.key_file": str(tmp / "key.pem"),
        "upload.verify_tls": False, "upload.connect_timeout_s": 3.0, "upload.read_timeout_s": 7.0,
        "upload.min_rate_bytes_per_s": 12345, "upload.backoff_base_s": 0.7, "upload.backoff_cap_s": 33.0,
        "spool.max_bytes": 1 << 29, "spool.min_free_bytes": 1, "spool.max_age_s": 999.0, "spool.on_full": "reject_new",
        "noreads.max_files": 7, "noreads.max_bytes": 123456,
    }


def base(tmp: Path, port: int) -> dict[str, Any]:
    return {"source": {"kind": "file", "path": str(SAMPLE), "realtime": True, "loop": True},
            "spool": {"dir": str(tmp / "spool"), "min_free_bytes": 0}, "http": {"port": port}}


def with_keys(doc: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    for key, value in values.items():
        *path, leaf = key.split(".")
        node = doc
        for p in path:
            node = node.setdefault(p, {})
        node[leaf] = value
    return doc


def wait_until(check: Any, timeout: float = 15.0) -> Any:
    """Until `check()` returns nothing left to wait for (an empty collection); returns what it last said."""
    deadline = time.monotonic() + timeout
    while True:
        left = check()
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


@pytest.mark.slow
def test_a_saved_config_reaches_every_part_that_takes_each_live_key(tmp_path: Path) -> None:
    values = new_values(tmp_path)
    assert sorted(values) == live_keys(), "give every live key of the schema a new value here"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(base(tmp_path, free_port())))
    cfg = load_config(path)
    daemon = Daemon(cfg, str(path), watch=True)
    try:
        daemon.build(access_for(cfg.http))
        daemon.start()
        agent, view = daemon.agent, daemon.live_view
        assert daemon.pipeline.ready.wait(20), "no frame from the sample"
        nobody = [k for k in live_keys() if not agent.takers_of(k)]
        assert not nobody, f"live keys no part takes: {nobody}"
        assert view.validator.from_payload(b"CID-1") == "CID-1"

        tmp = tmp_path / ".config.yaml.swp"
        tmp.write_text(yaml.safe_dump(with_keys(base(tmp_path, cfg.http.port or 0), values)))
        os.replace(tmp, path)  # saved the way editors do: the watcher reloads it
        new = load_config(path)
        want = reload_marks(new)

        def in_use(name: str, part: Any) -> list[Config | None]:
            """The configs a part runs on: its thread's own, as its status says, for a part with threads (each
            takes a reload at its own loop boundary); the part's own for one without."""
            st = daemon.pipeline.status()
            return {"capture": [st.capture.config], "decode": [st.decode.config, st.decode.feed_config],
                    "detect": [st.detect.config], "clip": [st.clips.config]}.get(name, [part.config])

        def stale() -> list[str]:
            return [f"{t.name}: {k} is {reload_marks(used)[k][0]!r}"
                    for t in agent.live_takers() for k in values if covers(t.keys, k)
                    for used in in_use(t.name, t.part) if used is None or reload_marks(used)[k][0] != want[k][0]]

        left = wait_until(stale)
        assert not left, f"parts still on the old value: {left}"
        assert daemon.config == new

        # the live view and the detect stage apply the same CID rule and ROI
        detect = daemon.pipeline.detect
        assert detect.validator.from_payload(b"CID-1") is None and detect.validator.from_payload(b"LOT-7") == "LOT-7"
        assert view.validator.from_payload(b"CID-1") is None and view.validator.from_payload(b"LOT-7") == "LOT-7"
        jpeg = view.frame_jpeg()
        assert jpeg is not None, "the live view rendered no picture"
        img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        h, w = img.shape[:2]
        edge = img[h // 10: h * 7 // 10, w // 2 + 1].astype(int)  # the ROI's left edge, above the legend
        blue = (edge[:, 0] - edge[:, 2] > 100).mean()
        assert blue > 0.9, f"no ROI drawn at x={w // 2}: {blue:.0%} of the edge is blue"
    finally:
        daemon.shutdown()


class SlowPart:
    """A part whose apply holds until released, to catch a second reload running beside it."""

    def __init__(self, cfg: Config):
        self.config = cfg
        self.inside = threading.Event()
        self.release = threading.Event()
        self.applying = 0
        self.most_at_once = 0

    def apply(self, new: Config, changed: frozenset[str]) -> None:
        self.applying += 1
        self.most_at_once = max(self.most_at_once, self.applying)
        self.inside.set()
        self.release.wait(10)
        self.config = new
        self.applying -= 1


def test_two_triggers_at_once_reload_one_after_the_other(caplog: pytest.LogCaptureFixture) -> None:
    """The watcher's thread and the main loop (SIGHUP) both call Agent.reconfigure: the second waits
    for the first, and the last config wins everywhere."""
    caplog.set_level(logging.INFO, logger="edge_agent.app")
    agent = Agent(Config(device_id="a"))
    part = SlowPart(agent.cfg)
    agent.take_live("slow", ("device_id",), part)
    first = threading.Thread(target=agent.reconfigure, args=(Config(device_id="b"),))
    first.start()
    assert part.inside.wait(10)
    second = threading.Thread(target=agent.reconfigure, args=(Config(device_id="c"),))
    second.start()
    # the second either says it waits for the first, or (without the lock) runs into apply beside it
    left = wait_until(lambda: [] if part.applying > 1 or "reload waits for the one in progress" in caplog.text
                      else ["the second reload"], timeout=10)
    assert not left, "the second reload neither waited nor ran"
    part.release.set()
    first.join(10)
    second.join(10)
    assert part.most_at_once == 1
    assert part.config.device_id == agent.cfg.device_id == "c"
