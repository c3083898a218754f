"""The training-set export at scale: `--ldos` LDOs (one real 5 s clip with two codes, reused with
distinct metadata; every 10th from an older agent without a track) in a real SeaweedFS, exported by
`edge-agent receiver export --format coco`, then loaded with pycocotools.

    python benchmarks/export_benchmark.py [--ldos 1000] [--workers 4]

Prints the export rate (LDOs/s, images/s) and exits 1 when pycocotools does not see exactly the
images and boxes the LDOs hold, or when a second run (resume) adds anything.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.receiver.storage import make_storage  # noqa: E402
from tests.seaweed_fixture import SeaweedFS  # noqa: E402
from tests.training_ldos import Expected, make_clip, store_ldos  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ldos", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=4)
    args = ap.parse_args()
    from pycocotools.coco import COCO

    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        weed = SeaweedFS(tmpdir / "weed").start()
        try:
            os.environ.update(weed.env())
            bucket = f"b{uuid.uuid4().hex[:12]}"
            weed.client().create_bucket(Bucket=bucket)
            spec = f"s3://{bucket}/ldo"
            storage = make_storage(spec, tmpdir / "receiver", weed.endpoint, "plant-a")
            clip = make_clip(tmpdir)
            t0 = time.perf_counter()
            metas = store_ldos(storage, clip, args.ldos)
            stored_s = time.perf_counter() - t0
            storage.index.close()
            want = Expected()
            for meta in metas:
                want.add(meta)
            print(f"stored           {args.ldos} LDOs ({len(clip.video)} B clip each, {want.legacy} without a track) "
                  f"in {stored_s:.1f} s")
            out = tmpdir / "coco"
            cmd = [sys.executable, "-m", "edge_agent.cli", "receiver", "export", "--format", "coco", "--out", str(out),
                   "--storage", spec, "--s3-endpoint", weed.endpoint, "--data-dir", str(tmpdir / "receiver"),
                   "--workers", str(args.workers)]
            t0 = time.perf_counter()
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
            secs = time.perf_counter() - t0
            if res.returncode != 0:
                print(f"FAIL: export exited {res.returncode}: {res.stderr[-2000:]}")
                return 1
            t1 = time.perf_counter()
            again = subprocess.run(cmd, capture_output=True, text=True, check=False)
            resume_s = time.perf_counter() - t1
            coco = COCO(str(out / "annotations.json"))
            images, boxes = len(coco.getImgIds()), len(coco.getAnnIds())
            legacy = sum(1 for a in coco.anns.values() if a["source"] == "first_sighting")
            jpeg_mb = sum(p.stat().st_size for p in (out / "images").glob("*.jpg")) / 1e6
        finally:
            weed.stop()
    print(f"exported         {args.ldos} LDOs -> {images} images, {boxes} boxes ({legacy} first-sighting only), "
          f"{jpeg_mb:.0f} MB of JPEG, in {secs:.1f} s with {args.workers} workers: {args.ldos / secs:.1f} LDOs/s, "
          f"{images / secs:.0f} images/s")
    print(f"resumed          second run in {resume_s:.1f} s: {again.stdout.strip()}")
    ok = (images, boxes, legacy) == (want.images, want.boxes, want.legacy) and again.returncode == 0 \
        and f"{args.ldos} done before" in again.stdout
    print("PASS" if ok else f"FAIL: expected {want.images} images, {want.boxes} boxes, {want.legacy} first-sighting "
                            "only, and a second run that adds nothing")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
