"""What making a read durable at detection costs: latency from a frame's analysis to its read committed,
and what one read writes to the disk (fsyncs and bytes), on this disk and on a slow one.

    python benchmarks/read_durability.py [--labels 240] [--reads 400] [--slow-fsync-ms 20] [--max-p99-ms 100]

Three measurements, each in a process of its own:

- pipeline: a labelled video (a new CID every quarter second) replayed through the agent's pipeline into
  a real spool; each read's commit (`Spool.detected`, called by the detect stage before it looks at the
  next frame) is timed, and the stage's own histogram (`edge_agent_read_durable_seconds`, from the frame's
  analysis to the commit's return) gives the mean;
- spool: `--reads` commits back to back, then as many clips attached (`put`), with the system calls
  counted under strace: fsyncs (fsync + fdatasync) a read costs at detection and once its clip is made,
  and the bytes SQLite and the clip files write (the write calls' sizes);
- slow disk: the spool measurement again with every fsync held `--slow-fsync-ms` (strace's delay
  injection: an SD card's fsync takes 5-30 ms, a worn one more).

Prints p50/p99/max per measurement and exits 1 when the pipeline's or the spool's p99 on this disk is over
--max-p99-ms. Needs strace for the fsync counts and the slow disk (apt-get install strace).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.config import SpoolConfig, parse_config  # noqa: E402
from edge_agent.delivery.spool import Spool  # noqa: E402
from edge_agent.metrics import Metrics  # noqa: E402
from edge_agent.pipeline.wiring import Pipeline  # noqa: E402


class TimedSink:
    """The spool, with each read's commit timed (what the detect thread waits for)."""

    def __init__(self, spool: Spool):
        self.spool = spool
        self.commit_s: list[float] = []

    def detected(self, event_id: str, cid: str, metadata: dict[str, Any]) -> bool:
        started = time.perf_counter()
        ok = self.spool.detected(event_id, cid, metadata)
        self.commit_s.append(time.perf_counter() - started)
        return ok

    def part_path(self, event_id: str) -> Path:
        return self.spool.part_path(event_id)

    def put(self, event_id: str, cid: str, metadata: dict[str, Any], video_part: Path | None) -> Any:
        return self.spool.put(event_id, cid, metadata, video_part)


def pipeline_run(work: Path, labels: int) -> dict[str, Any]:
    from tests.label_video import make_label_video
    from tests.metric_values import observations

    video = make_label_video(work / "labels.mp4", seconds=labels / 4 + 2, per_s=4, size=(640, 360))
    cfg = parse_config(json.dumps({"spool": {"dir": str(work / "spool"), "min_free_bytes": 0},
                                   "source": {"kind": "file", "path": str(video)},
                                   "detector": {"max_blind_s": 0}, "clip": {"pre_roll_s": 1.0, "post_roll_s": 1.0}}))
    metrics = Metrics()
    spool = Spool(cfg.spool, metrics)
    sink = TimedSink(spool)
    pipeline = Pipeline(cfg, sink, videos=[str(video)], metrics=metrics)
    pipeline.start()
    pipeline.wait()
    spool.close()
    count, total = observations(metrics, "edge_agent_read_durable_seconds")
    return {"commits_s": sink.commit_s, "histogram_mean_s": total / count if count else None}


def spool_run(work: Path, reads: int) -> dict[str, Any]:
    spool = Spool(SpoolConfig(dir=str(work / "spool"), min_free_bytes=0))
    meta = {"schema_version": 1, "device_id": "bench", "detected_at": "2026-12-07T00:00:00.000Z", "clip": {},
            "detection": {"decoder": "zxing", "polygon": [[10, 10], [90, 10], [90, 90], [10, 90]],
                          "frame_width": 1920, "frame_height": 1080, "hits": 1}, "agent": {"version": "bench"}}
    ids = [str(uuid.uuid4()) for _ in range(reads)]
    mark = work / "marks"
    mark.mkdir()
    commits = []
    _mark(mark / "detect-start")
    for event_id in ids:
        started = time.perf_counter()
        spool.detected(event_id, "CID-BENCH", {**meta, "event_id": event_id, "cid": "CID-BENCH"})
        commits.append(time.perf_counter() - started)
    _mark(mark / "detect-end")
    clip = os.urandom(2 << 20)  # a 5 s 1080p clip of H.264 is 2-5 MB
    puts = []
    for event_id in ids[: max(1, reads // 10)]:
        part = spool.part_path(event_id)
        part.write_bytes(clip)
        started = time.perf_counter()
        spool.put(event_id, "CID-BENCH", {**meta, "event_id": event_id, "cid": "CID-BENCH"}, part)
        puts.append(time.perf_counter() - started)
    _mark(mark / "put-end")
    spool.close()
    return {"commits_s": commits, "puts_s": puts, "reads": reads, "clips": len(puts)}


def _mark(path: Path) -> None:
    """An fsync of a file of its own: where a phase ends, in the strace output."""
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT)
    os.fsync(fd)
    os.close(fd)


def child(args: argparse.Namespace) -> None:
    work = Path(args.work)
    out = pipeline_run(work, args.labels) if args.child == "pipeline" else spool_run(work, args.reads)
    print(json.dumps(out))


def run_child(kind: str, args: argparse.Namespace, strace: list[str] | None = None) -> tuple[dict[str, Any], Path]:
    work = Path(tempfile.mkdtemp(prefix=f"durable-{kind}-", dir=args.dir))
    cmd = [sys.executable, __file__, "--child", kind, "--work", str(work), "--labels", str(args.labels),
           "--reads", str(args.reads)]
    trace = work / "strace.txt"
    if strace is not None:
        cmd = [*strace, "-o", str(trace), *cmd]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        sys.exit(f"read_durability: the {kind} run failed: {res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1]), trace


_SYNC = re.compile(r"^\d+\s+(?:fsync|fdatasync)\(\d+<([^>]*)>")
_WRITE = re.compile(r"^\d+\s+(?:write|pwrite64)\(\d+<([^>]*)>.*\)\s+=\s+(\d+)")


def syscalls(trace: Path) -> dict[str, dict[str, int]]:
    """Per phase (detect, put): fsyncs and bytes written to the spool's files."""
    phase, out = "open", {p: {"fsyncs": 0, "bytes": 0} for p in ("open", "detect", "put")}
    for line in trace.read_text().splitlines():
        if m := _SYNC.match(line):
            name = m.group(1)
            if name.endswith("/marks/detect-start"):
                phase = "detect"
            elif name.endswith("/marks/detect-end"):
                phase = "put"
            elif name.endswith("/marks/put-end"):
                phase = "done"
            elif phase in out and "/spool/" in name:
                out[phase]["fsyncs"] += 1
        elif (m := _WRITE.match(line)) and phase in out and "/spool/" in m.group(1):
            out[phase]["bytes"] += int(m.group(2))
    return out


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))] * 1000


def row(name: str, values: list[float]) -> str:
    return (f"{name:<34} {len(values):>6} {pct(values, 0.5):>8.2f} {pct(values, 0.99):>8.2f} "
            f"{max(values) * 1000:>8.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--labels", type=int, default=240, help="reads in the pipeline run (4 a second of video)")
    ap.add_argument("--reads", type=int, default=400, help="reads committed back to back in the spool run")
    ap.add_argument("--slow-fsync-ms", type=float, default=20.0, help="each fsync held this long: a slow disk")
    ap.add_argument("--max-p99-ms", type=float, default=100.0)
    ap.add_argument("--dir", default=None, help="where the spools are made (its disk is the one measured)")
    ap.add_argument("--child", choices=["pipeline", "spool"], help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return 0
    strace = shutil.which("strace")
    if strace is None:
        print("read_durability: strace is missing (apt-get install strace): it counts fsyncs and slows them",
              file=sys.stderr)
        return 69
    traced = [strace, "-f", "-qq", "-y", "-e", "trace=fsync,fdatasync,write,pwrite64"]
    slow_us = int(args.slow_fsync_ms * 1000)
    slowed = [strace, "-f", "-qq", "-y", "-e", "trace=fsync,fdatasync",
              "-e", f"inject=fsync,fdatasync:delay_exit={slow_us}"]

    pipe, _ = run_child("pipeline", args)
    plain, _ = run_child("spool", args)
    counted, trace = run_child("spool", args, traced)
    slow, _ = run_child("spool", args, slowed)
    slow_pipe, _ = run_child("pipeline", args, slowed)
    calls = syscalls(trace)

    print(f"{'commit of a read (ms)':<34} {'reads':>6} {'p50':>8} {'p99':>8} {'max':>8}")
    print(row("pipeline, this disk", pipe["commits_s"]))
    print(row("spool alone, this disk", plain["commits_s"]))
    print(row(f"pipeline, fsync +{args.slow_fsync_ms:g} ms", slow_pipe["commits_s"]))
    print(row(f"spool alone, fsync +{args.slow_fsync_ms:g} ms", slow["commits_s"]))
    print(row("clip put (2 MiB), this disk", plain["puts_s"]))
    print(row(f"clip put (2 MiB), fsync +{args.slow_fsync_ms:g} ms", slow["puts_s"]))
    if pipe["histogram_mean_s"] is not None:
        print(f"frame analysed -> read durable (the stage's histogram), mean {pipe['histogram_mean_s'] * 1000:.2f} ms")
    reads, clips = counted["reads"], counted["clips"]
    d, p = calls["detect"], calls["put"]
    print(f"a read at detection: {d['fsyncs'] / reads:.2f} fsync, {d['bytes'] / reads / 1024:.1f} KiB written "
          f"(SQLite's log; {reads} reads)")
    print(f"its clip attached:   {p['fsyncs'] / clips:.2f} fsyncs, {p['bytes'] / clips / 1024:.1f} KiB written "
          f"besides the clip's own bytes written by the clip maker ({clips} clips of 2 MiB)")
    worst = max(pct(pipe["commits_s"], 0.99), pct(plain["commits_s"], 0.99))
    ok = worst <= args.max_p99_ms
    print(f"{'PASS' if ok else 'FAIL'}: p99 of a read's commit on this disk {worst:.2f} ms (target <= "
          f"{args.max_p99_ms:g} ms)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
