"""Every clip's metadata carries its track: each analysed frame in which a code was read, in clip
time, with the code's outline in full-frame pixels and the decoder that read it, the other CIDs in
view included; and the picture figures of those frames.

Checked against where the video factory drew each label (tests/media_factory.py records it per
frame), on a conveyor with three products, two of them in view at once, read through a detector
that downscales and crops (a region of interest). Times are checked on the MP4 itself: the clip is
decoded, each presented picture is matched to its frame of the source video, and at each sighting's
clip time the label drawn in that frame must be where the sighting says.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest

from tests import agent_process
from tests.cli_in_process import Cli
from tests.media_factory import make_video

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # a replay of 13 s of video, and every clip decoded back

FPS = 30
ANALYSED_EVERY = 3  # detector.rate_hz 10 on 30 fps without B-frames: the first frame of each 0.1 s slot
SIZE = (960, 540)
# (payload, in view from, to, top row): A and B are in view together, C alone; 200 px/s is ~7 px a
# frame, so a sighting one frame off in time is off by more than the 4 px allowed
CODES = [("CID-TRACK-A1", 3.0, 6.0, 40), ("CID-TRACK-B2", 3.8, 6.8, 300), ("CID-TRACK-C3", 10.0, 12.0, 190)]
# a QR code whose payload the CID rule refuses, in the clips of B2 and C3: an outline in their tracks, never text
REFUSED = ("not a CID!", 8.0, 9.6, 40)
SPEED = 200.0
# the detector reads a 640 px wide copy of a region of interest without the top rows: its outlines
# must come back in the source's pixels all the same
# max_blind_s 0: the track is compared with every frame detection would analyse at its rate
CONFIG = "detector:\n  max_width_px: 640\n  max_blind_s: 0\n  roi: {left: 0.0, top: 0.05, right: 1.0, bottom: 1.0}\n"
BOX_PX = 4.0
FRAME_S = 1 / FPS


def small(img: np.ndarray) -> np.ndarray:
    return cv2.resize(img, (96, 54), interpolation=cv2.INTER_AREA).astype(np.float32)


class Replayed:
    def __init__(self, clips: Path, labels: dict[int, list[tuple[Any, tuple[int, int, int, int]]]],
                 source: list[np.ndarray], metas: list[dict]):
        self.clips, self.labels, self.metas = clips, labels, metas
        self.source = np.stack(source)  # (frames, 54, 96): one picture against all of them at once
        self._shown: dict[str, list[tuple[float, int]]] = {}

    def where(self, n: int, cid: str) -> tuple[int, int, int, int] | None:
        return next((box for p, box in self.labels.get(n, []) if p == cid), None)

    def shown(self, meta: dict) -> list[tuple[float, int]]:
        """(presentation time, source frame index) of every frame the clip presents: the source frame
        closest to the picture, pixel by pixel."""
        if meta["event_id"] not in self._shown:
            with av.open(str(self.clips / f"{meta['event_id']}.mp4")) as c:
                pictures = [(f.time, small(f.to_ndarray(format="gray"))) for f in c.decode(c.streams.video[0])]
            self._shown[meta["event_id"]] = [(t, int(np.abs(self.source - p).mean(axis=(1, 2)).argmin()))
                                             for t, p in pictures]
        return self._shown[meta["event_id"]]


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Replayed:
    tmp = tmp_path_factory.mktemp("track")
    labels: dict[int, list] = {}
    video = make_video(tmp / "conveyor.mp4", seconds=13, fps=FPS, size=SIZE, codes=[*CODES, REFUSED],
                       speed_px_s=SPEED, labels=labels)
    with av.open(str(video)) as c:
        source = [small(f.to_ndarray(format="gray")) for f in c.decode(c.streams.video[0])]
    (tmp / "config.yaml").write_text(CONFIG)
    res = agent_process.run(["replay", "--config", "config.yaml", "--no-upload",
                             "--output-dir", "clips", "-q", str(video)], cwd=tmp, capture_output=True, text=True,
                            timeout=300, check=False, env={**os.environ, "XDG_STATE_HOME": str(tmp / "state"),
                                                           "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr[-3000:]
    metas = [json.loads(p.read_text()) for p in sorted((tmp / "clips").glob("*.json"))]
    return Replayed(tmp / "clips", labels, source, metas)


def box_of(polygon: list) -> tuple[int, int, int, int]:
    xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
    return min(xs), min(ys), max(xs), max(ys)


def box_error(polygon: list, drawn: tuple[int, int, int, int]) -> float:
    """Both are outlines in continuous pixel coordinates: the symbol covers [x0, x1) x [y0, y1), its
    bottom-right corner is (x1, y1), as a COCO box [x0, y0, x1 - x0, y1 - y0] says."""
    return max(abs(a - b) for a, b in zip(box_of(polygon), drawn, strict=True))


def test_every_clip_tracks_its_code_in_most_analysed_frames_where_it_was_visible(replayed: Replayed) -> None:
    assert sorted(m["cid"] for m in replayed.metas) == [c[0] for c in CODES]
    for meta in replayed.metas:
        det = meta["detection"]
        track = det["track"]
        assert track[0]["cid"] == meta["cid"]  # the event's own code first
        shown = replayed.shown(meta)
        frames = [n for _, n in shown]
        assert frames == list(range(frames[0], frames[0] + len(frames)))  # every frame once, in order
        assert len(frames) == meta["clip"]["frames"]
        visible = {n for n in frames if n % ANALYSED_EVERY == 0 and replayed.where(n, meta["cid"])}
        seen = {min(shown, key=lambda f: abs(f[0] - s["t"]))[1] for s in track[0]["sightings"]}
        assert visible and len(seen & visible) >= 0.8 * len(visible), (meta["cid"], sorted(seen), sorted(visible))
        q = det["quality"]
        assert q["frames"] == len(track[0]["sightings"]) and q["read_first_seen"] is True
        assert 0 < q["sharpness_min"] <= q["sharpness_median"]
        assert 50 < q["exposure_median"] < 200 and q["px_per_module"] == pytest.approx(5.0, abs=0.5)


def test_two_products_in_view_share_each_others_sightings(replayed: Replayed) -> None:
    by_cid = {m["cid"]: [t["cid"] for t in m["detection"]["track"]] for m in replayed.metas}
    assert by_cid == {"CID-TRACK-A1": ["CID-TRACK-A1", "CID-TRACK-B2"],
                      "CID-TRACK-B2": ["CID-TRACK-B2", "CID-TRACK-A1"], "CID-TRACK-C3": ["CID-TRACK-C3"]}


def test_each_sighting_is_where_the_label_was_drawn_in_the_frame_its_clip_time_shows(replayed: Replayed) -> None:
    checked = 0
    for meta in replayed.metas:
        shown = replayed.shown(meta)
        for code in meta["detection"]["track"]:
            for s in code["sightings"]:
                assert s["decoder"] in ("zxing", "zbar", "zbar-region", "zxing-enlarged", "zbar-enlarged")
                shown_t, n = min(shown, key=lambda f: abs(f[0] - s["t"]))
                assert abs(shown_t - s["t"]) < FRAME_S / 2  # a presented frame at that time...
                assert n % ANALYSED_EVERY == 0  # ... which is one the detector analysed
                drawn = replayed.where(n, code["cid"])
                assert drawn is not None and box_error(s["polygon"], drawn) <= BOX_PX, (code["cid"], s, n, drawn)
                checked += 1
    assert checked >= 60


def test_each_track_frame_is_whole_with_refused_codes_as_outlines_and_empty_frames_show_no_code(
        replayed: Replayed) -> None:
    """A training set takes a track's frames as fully labelled and its empty frames as pictures without a code."""
    frames_checked = whole = refused = empty = 0
    for meta in replayed.metas:
        assert REFUSED[0] not in json.dumps(meta)  # untrusted bytes never go out
        shown = replayed.shown(meta)
        info = meta["detection"]["track_frames"]
        for t in info["times"]:
            _, n = min(shown, key=lambda f: abs(f[0] - t))
            drawn = {p for p, _ in replayed.labels.get(n, [])}
            entry = {c["cid"] for c in meta["detection"]["track"] if any(s["t"] == t for s in c["sightings"])}
            for s in info["symbols"]:
                if s["t"] == t:
                    assert s["kind"] == "rejected" and box_error(s["polygon"], replayed.where(n, REFUSED[0])) <= BOX_PX
                    entry.add(REFUSED[0])
                    refused += 1
            assert entry <= drawn, (meta["cid"], t, entry, drawn)  # nothing that was not there
            whole += entry == drawn
            frames_checked += 1
        for t in info["empty"]:
            _, n = min(shown, key=lambda f: abs(f[0] - t))
            assert not any(replayed.labels.get(m) for m in (n - 1, n, n + 1)), (meta["cid"], t)
            empty += 1
    assert refused >= 10 and empty >= 10
    assert whole >= 0.9 * frames_checked, (whole, frames_checked)  # the detector reads nearly every code drawn


def test_a_track_that_cannot_be_built_costs_the_track_not_the_clip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   in_process: Cli) -> None:
    """The track is an extra: a fault building it (a bug) is logged with its CID and clip id, and the read
    goes out with its video all the same, without a track, rather than waiting for the next start."""
    from edge_agent.pipeline.track import SightingLog

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("planted fault")

    monkeypatch.setattr(SightingLog, "track", broken)
    video = make_video(tmp_path / "line.mp4", seconds=4.0, size=(480, 270), codes=[("CID-NO-TRACK-1", 1.0, 2.5)])
    res = in_process("replay", "-q", "--no-upload", "--output-dir", str(tmp_path / "out"), str(video))
    assert res.returncode == 0, res.stderr
    assert "clip track failed cid=CID-NO-TRACK-1" in res.stderr
    (meta_file,) = (tmp_path / "out").rglob("*.json")
    meta = json.loads(meta_file.read_text())
    meta = meta.get("metadata", meta)
    assert meta["cid"] == "CID-NO-TRACK-1" and "track" not in meta["detection"] and "error" not in meta["clip"]
    assert len(list((tmp_path / "out").rglob("*.mp4"))) == 1
