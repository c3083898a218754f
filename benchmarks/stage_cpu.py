"""Where the agent's CPU goes, per frame and per stage, on a Pi-like camera: the rpicam-vid pipe
against picamera2 (through its stand-in), each beside bare PyAV decoding of the same frames.

    python benchmarks/stage_cpu.py [--seconds 20] [--repeat 3] [--paths pipe,picamera2] [--video V]

The pipeline runs in this process on a live 1080p30 camera without B-frames (the sample re-encoded as
a Pi's encoder writes it, a keyframe a second):

- pipe: raw Annex-B H.264 on a pipe, one frame at a time (tests/bursty_h264.py --burst 1), as
  `rpicam-vid --codec h264 -o -` writes it (configs/pi-csi.yaml): decoded but for the end of each
  keyframe interval (detector.max_blind_s);
- picamera2: source.kind picamera2 through tests/picamera2_standin, which plays the same stream as the
  camera's encoder output and its decoded, scaled copy as the 1280x720 lores stream (configs/
  pi-csi-picamera2.yaml): nothing is decoded. The stand-in's own thread (what the ISP and the encoder do
  on a Pi) is printed apart and not counted as the agent's.

Each thread's CPU comes from /proc/self/task/<tid>/stat over a window after a warm-up; Python threads
by stage name (capture: demux, ring and hand-offs; decode: the decode calls and the luma plane; detect;
clips), FFmpeg's frame-thread workers as `ffmpeg`, threads Python does not know (FFmpeg's slice
workers) as `other`. After each run, benchmarks/bare_decode.py decodes as many frames of the same stream
as the camera sent in the window (or the agent decoded, when more), in its own process. Prints
microseconds of CPU a frame per stage, the agent's total against bare decoding, and over --repeat runs
the median and spread of the ratio. Exits 1 when the pipe path's median ratio is above --max-ratio
(1.0) or the picamera2 path decodes anything or costs more a frame than the pipe path.

STAGE_CPU_AGENT=DIR runs another checkout's agent (an older commit, for a before/after) from this script.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, os.environ.get("STAGE_CPU_AGENT") or str(ROOT))

import av  # noqa: E402

from benchmarks.bare_decode import no_bframes_copy  # noqa: E402
from edge_agent.config import parse_config  # noqa: E402
from edge_agent.delivery.sinks import FolderSink  # noqa: E402
from edge_agent.pipeline.wiring import Pipeline  # noqa: E402

STANDIN = ROOT / "tests" / "picamera2_standin"
TICK = os.sysconf("SC_CLK_TCK")
WARMUP_S = 4.0


def thread_cpu() -> dict[str, float]:
    """CPU seconds of this process's threads, by stage: Python threads by name, FFmpeg's by theirs."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        name = names.get(int(task.name)) or ("ffmpeg" if comm.startswith("av:") else f"other:{comm}")
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / TICK
    return out


def annexb_copy(mp4: Path, dst: Path) -> Path:
    """The stream as picamera2's encoder hands it over: raw Annex-B."""
    if not dst.exists():
        with av.open(str(mp4)) as src, av.open(str(dst), "w", format="h264") as out:
            ins = src.streams.video[0]
            o = out.add_stream_from_template(ins)
            for p in src.demux(ins):
                if p.size:
                    p.stream = o
                    out.mux(p)
    return dst


def run(path: str, video: Path, work: Path, seconds: float) -> tuple[dict[str, float], int, int]:
    """(CPU seconds by thread over the window, frames read in it, frames decoded in it)."""
    if path == "pipe":
        cmd = f"{sys.executable} {ROOT / 'tests' / 'bursty_h264.py'} {video} --loop --burst 1"
        src = f"source:\n  kind: pipe\n  command: {cmd}\n  input_format: h264\n"
    else:
        src = "source:\n  kind: picamera2\n  fps: 30\n"
    cfg = parse_config(src + f"spool:\n  dir: {work / 'spool'}\n", env={})
    p = Pipeline(cfg, FolderSink(work / "clips"))
    p.start()
    if not p.ready.wait(30):
        sys.exit(f"{path}: no frame in 30 s")
    time.sleep(WARMUP_S)
    c0, f0, d0 = thread_cpu(), p.status().capture.frames, p.status().decode.decoded
    time.sleep(seconds)
    c1, st = thread_cpu(), p.status()
    p.stop(15)
    return {k: v - c0.get(k, 0.0) for k, v in c1.items()}, st.capture.frames - f0, st.decode.decoded - d0


def bare(video: Path, frames: int) -> float:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bare_decode.py"), str(video),
                          "--frames", str(frames)], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[1])


CAMERA = ("standin-camera",)  # not the agent's: on a Pi this is the ISP's and the encoder's work
STAGES = ("capture", "decode", "ffmpeg", "detect", "clip")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--paths", default="pipe,picamera2")
    ap.add_argument("--video", type=Path, default=ROOT / "sample_media" / "conveyor_1080p30.mp4")
    ap.add_argument("--max-ratio", type=float, default=1.0)
    args = ap.parse_args()
    paths = args.paths.split(",")
    ratios: dict[str, list[float]] = {p: [] for p in paths}
    per_frame: dict[str, list[float]] = {p: [] for p in paths}
    decoded: dict[str, int] = dict.fromkeys(paths, 0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        mp4 = no_bframes_copy(args.video, work / "camera.mp4")
        h264 = annexb_copy(mp4, work / "camera.h264")
        if "picamera2" in paths:
            sys.path.insert(0, str(STANDIN))
            os.environ["PICAMERA2_STANDIN_VIDEO"] = str(h264)
            os.environ["PICAMERA2_STANDIN_CACHE"] = str(work)
            import picamera2  # the stand-in

            picamera2.prepare_lores(str(h264), (1280, 720))  # the ISP's work, done before the clock runs
        for i in range(args.repeat):
            for path in paths:
                cpu, frames, dec = run(path, mp4, work / f"{path}-{i}", args.seconds)
                decoded[path] += dec
                agent = sum(v for k, v in cpu.items() if k not in CAMERA)
                # the yardstick decodes every frame the camera sent in the window, or as many as the agent
                # decoded when more (a decoder catching up a start-up backlog decodes more than the camera sent
                # meanwhile); the agent may decode fewer (detector.max_blind_s)
                yard = bare(mp4, max(dec, frames))
                ratios[path].append(agent / yard)
                per_frame[path].append(agent * 1e6 / max(1, frames))
                us = {k: v * 1e6 / max(1, frames) for k, v in cpu.items()}
                stages = "  ".join(f"{k} {us.get(k, 0):.0f}" for k in STAGES)
                rest = sum(v for k, v in us.items() if k not in STAGES and k not in CAMERA)
                if os.environ.get("STAGE_CPU_VERBOSE"):
                    print({k: round(v) for k, v in us.items() if k not in STAGES})
                camera = sum(us.get(k, 0) for k in CAMERA)
                print(f"run {i + 1} {path:<9} {frames} frames ({dec} decoded): us CPU a frame: {stages}"
                      f"  other {rest:.0f}  | agent {agent * 1e6 / max(1, frames):.0f}"
                      + (f" (+ stand-in camera {camera:.0f})" if camera else "")
                      + f"  | bare decode {yard * 1e6 / max(1, frames):.0f}  ratio {agent / yard:.2f}", flush=True)
    print()
    ok = True
    for path in paths:
        r = ratios[path]
        print(f"{path:<9} agent/bare decode over {len(r)} runs: median {statistics.median(r):.2f} "
              f"(min {min(r):.2f}, max {max(r):.2f}); agent CPU a frame median "
              f"{statistics.median(per_frame[path]):.0f} us")
    if "pipe" in paths and statistics.median(ratios["pipe"]) > args.max_ratio:
        print(f"MISS: the pipe path uses more than {args.max_ratio:.2f}x bare decoding")
        ok = False
    if "picamera2" in paths:
        if decoded["picamera2"]:
            print(f"MISS: the picamera2 path decoded {decoded['picamera2']} frames")
            ok = False
        if "pipe" in paths and statistics.median(per_frame["picamera2"]) >= statistics.median(per_frame["pipe"]):
            print("MISS: the picamera2 path costs no less a frame than the pipe path")
            ok = False
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
