"""`edge-agent run` on a live 30 fps source for a minute: drops, CPU, memory, detection-to-delivery.

    python benchmarks/live_benchmark.py [--seconds 60] [--video sample_media/conveyor_1080p30.mp4] [--encode]
                                        [--raw 1280x720] [--annexb 10] [--viewer]

The camera is a `pipe` source: tests/stream_sample.py streams the sample in real time as MPEG-TS,
looping (a label every ~5-7 s). --raw WxH makes it a raw YUYV camera of that size instead
(tests/stream_raw.py), which the agent encodes to H.264 as frames arrive; --annexb N raw H.264 with
no timestamps, N frames at a time (tests/bursty_h264.py: the Pi CSI default, on a loaded Pi). Clips go to a real local
receiver. --encode re-encodes clips (clip.width 1280, libx264) instead of remuxing. Prints frames,
dropped and skipped frames, the daemon's CPU share (of one core; the camera process excluded), its
peak RSS, and detection-to-delivery latency (receiver's received_at - metadata.detected_at; it
includes the post-roll the clip must wait for).

--annexb also measures the yardstick: the stream is the sample re-encoded as a Pi camera sends it
(1080p30, no B-frames, a keyframe a second), and after the run bare PyAV decoding of as many frames as
the camera sent in the measured window (benchmarks/bare_decode.py, its own process) gives the CPU the
agent is compared with; exits 1 above --max-ratio (1.0). The agent may decode fewer frames than it read
(detector.max_blind_s; --max-blind S sets it for the run): both counts are printed. The agent's
threads' CPU a frame is printed by name (FFmpeg's frame-thread workers apart from the Python threads).

--viewer measures the live view's cost: the daemon runs --seconds with no viewer, then --seconds
with one page watching (what the page does: /frame.jpg again 300 ms after each picture arrives,
/api/status every second), on the 720p sample unless --video says otherwise; it prints the CPU of
both phases and exits 1 when one viewer adds more than 10% of one core.
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
from datetime import datetime
from pathlib import Path

import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bare_decode import no_bframes_copy  # noqa: E402
from tests.receiver_fixture import ReceiverProcess, free_port  # noqa: E402

# the device budget: a Pi 4 with 2 GB runs the agent beside the OS and a camera stack
MAX_RSS_MB = 250


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def scrape(port: int) -> dict[str, float]:
    out = {}
    for line in requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


VIEWER_BUDGET = 0.10  # of one core, for one page watching at 720p


class Viewer:
    """One open page: a picture, 300 ms after the last one arrived; the status every second."""

    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}"
        self.stop = threading.Event()
        self.pictures = 0
        self.bytes = 0
        self._threads = [threading.Thread(target=self._pictures, daemon=True),
                         threading.Thread(target=self._status, daemon=True)]
        for t in self._threads:
            t.start()

    def _pictures(self) -> None:
        with requests.Session() as s:
            while not self.stop.is_set():
                r = s.get(self.url + "/frame.jpg", timeout=5)
                if r.status_code == 200:
                    self.pictures += 1
                    self.bytes += len(r.content)
                self.stop.wait(0.3)

    def _status(self) -> None:
        with requests.Session() as s:
            while not self.stop.is_set():
                s.get(self.url + "/api/status", timeout=5)
                self.stop.wait(1.0)

    def close(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(10)


def wait_for_metrics(port: int, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Until the daemon answers on /metrics (a loaded machine takes a while to import and open the camera)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if scrape(port).get("edge_agent_frames_total", 0) > 0:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    sys.exit(f"the daemon did not come up in {timeout:.0f} s")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of a process's threads, summed by their kernel name: the agent names its stage
    threads (edge_agent/thread_names.py), FFmpeg its workers av:h264:...; the rest are `python`."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        key = "ffmpeg " + name.split(":")[1] if name.startswith("av:") else name
        out[key] = out.get(key, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def busy_s(ps: psutil.Process) -> float:
    c = ps.cpu_times()
    return c.user + c.system


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--video", default=str(ROOT / "sample_media" / "conveyor_1080p30.mp4"))
    ap.add_argument("--encode", action="store_true", help="re-encode clips (clip.width: 1280) instead of remux")
    ap.add_argument("--raw", default="", metavar="WxH", help="a raw YUYV camera of this size (encoded on arrival)")
    ap.add_argument("--annexb", type=int, default=0, metavar="BURST",
                    help="raw H.264 without timestamps, as rpicam-vid --codec h264 -o - writes it (the Pi CSI "
                    "default), BURST frames at a time (1: steady)")
    ap.add_argument("--viewer", action="store_true", help="--seconds without, then --seconds with one page watching")
    ap.add_argument("--max-blind", type=float, default=None, metavar="S",
                    help="detector.max_blind_s for the run (default: the agent's default)")
    ap.add_argument("--max-ratio", type=float, default=1.0,
                    help="--annexb: the most CPU the agent may use against bare PyAV decoding of the same frames")
    args = ap.parse_args()
    if args.viewer and "--video" not in sys.argv:
        args.video = str(ROOT / "sample_media" / "conveyor_720p30.mp4")
    phases: list[tuple[str, float, float]] = []  # (name, cpu seconds, wall seconds)
    threads: dict[str, float] = {}
    window_frames = window_decoded = 0.0
    viewer = None
    with tempfile.TemporaryDirectory() as tmp:
        tmpd = Path(tmp)
        port = free_port()
        with ReceiverProcess(tmpd / "receiver") as receiver:
            cmd = f"{sys.executable} {ROOT / 'tests' / 'stream_sample.py'} {args.video} --loop"
            if args.raw:
                cmd = f"{sys.executable} {ROOT / 'tests' / 'stream_raw.py'} {args.video} --loop --size {args.raw}"
            fmt = ""
            if args.annexb:
                # a Pi camera's stream: no B-frames (every picture a reference, all decoded), a keyframe a second
                args.video = str(no_bframes_copy(Path(args.video), tmpd / "camera.mp4"))
                cmd = f"{sys.executable} {ROOT / 'tests' / 'bursty_h264.py'} {args.video} --loop --burst {args.annexb}"
                fmt = "  input_format: h264\n"
            cfg = tmpd / "config.yaml"
            cfg.write_text(f"source:\n  kind: pipe\n  command: {cmd}\n{fmt}upload:\n  url: {receiver.cid_url}\n"
                           f"spool:\n  dir: {tmpd / 'spool'}\n  min_free_bytes: 0\nhttp:\n  port: {port}\n"
                           + ("clip:\n  width: 1280\n" if args.encode else "")
                           + (f"detector:\n  max_blind_s: {args.max_blind}\n" if args.max_blind is not None else ""),
                           encoding="utf-8")
            proc = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "run", "--config", str(cfg)],
                                    stderr=subprocess.DEVNULL)
            ps = psutil.Process(proc.pid)
            peak = 0
            for name in ("no viewer", "one viewer") if args.viewer else ("run",):
                if name == "one viewer":
                    viewer = Viewer(port)
                else:
                    wait_for_metrics(port, proc)
                    time.sleep(3)  # start-up (imports, the source opening) is not the steady state
                m0 = scrape(port)
                frames0, decoded0 = m0.get("edge_agent_frames_total", 0), m0.get("edge_agent_frames_decoded_total", 0)
                threads0 = thread_cpu(proc.pid)
                cpu0, t0 = busy_s(ps), time.monotonic()
                deadline = t0 + args.seconds
                while time.monotonic() < deadline:
                    peak = max(peak, ps.memory_info().rss)
                    time.sleep(0.2)
                phases.append((name, busy_s(ps) - cpu0, time.monotonic() - t0))
                m1 = scrape(port)
                window_frames = m1.get("edge_agent_frames_total", 0) - frames0
                window_decoded = m1.get("edge_agent_frames_decoded_total", 0) - decoded0
                threads = {k: v - threads0.get(k, 0.0) for k, v in thread_cpu(proc.pid).items()}
            if viewer is not None:
                viewer.close()
            cpu = ps.cpu_times()
            m = scrape(port)
            proc.terminate()
            proc.wait(20)
            events = receiver.events()
            bare = None
            if args.annexb:  # the yardstick: decoding every frame the camera sent, after the agent has stopped
                out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bare_decode.py"), args.video,
                                      "--frames", str(int(max(window_frames, window_decoded)))],
                                     capture_output=True, text=True, check=True)
                bare = float(out.stdout.split()[1])
    lat = sorted(ts(e["received_at"]) - ts(e["metadata"]["detected_at"]) for e in events)
    busy = cpu.user + cpu.system
    total_s = args.seconds * len(phases) + (3 if phases else 0)
    camera = (f"raw YUYV {args.raw} (encoded on arrival)" if args.raw else
              f"raw H.264, no timestamps, {args.annexb} frame(s) at a time" if args.annexb else "H.264 in MPEG-TS")
    print(f"source           {Path(args.video).name} streamed live at 30 fps as {camera} for {args.seconds:.0f} s, "
          f"clips {'re-encoded (libx264, 1280 px)' if args.encode else 'remuxed'}")
    print(f"frames           {m.get('edge_agent_frames_total', 0):.0f} read, "
          f"{m.get('edge_agent_frames_dropped_total', 0):.0f} dropped, "
          f"{m.get('edge_agent_frames_undecoded_total', 0):.0f} left undecoded (max_blind_s), "
          f"{m.get('edge_agent_frames_skipped_total', 0):.0f} skipped by the detector, "
          f"{m.get('edge_agent_frames_analysed_total', 0):.0f} analysed")
    print(f"clips            {len(events)} delivered ({m.get('edge_agent_clips_total', 0):.0f} made)")
    print(f"CPU              {busy / total_s:.0%} of one core ({busy / total_s / psutil.cpu_count():.0%} "
          f"of {psutil.cpu_count()} cores) over the whole run, camera process excluded")
    print(f"peak RSS         {peak / 2**20:.1f} MB")
    if lat:
        print(f"detect->deliver  median {statistics.median(lat):.2f} s, max {max(lat):.2f} s "
              f"(includes the post-roll)")
    missed = []
    if threads:
        per = 1e6 / max(1.0, window_frames)
        print("agent threads    " + ", ".join(f"{k} {v * per:.0f} us" for k, v in sorted(threads.items(),
                                                                                      key=lambda kv: -kv[1]))
              + f" a frame (last window, {window_frames:.0f} frames)")
    if bare is not None:
        agent_cpu = phases[-1][1]
        ratio = agent_cpu / bare if bare > 0 else float("inf")
        print(f"vs bare decode   agent {agent_cpu:.2f} CPU-s ({window_frames:.0f} frames read, {window_decoded:.0f} "
              f"decoded), bare PyAV decode of as many frames "
              f"{bare:.2f} CPU-s: ratio {ratio:.2f} (target <= {args.max_ratio:.2f})")
        if ratio > args.max_ratio:
            missed.append(f"agent CPU {ratio:.2f}x bare decoding")
    if m.get("edge_agent_frames_dropped_total", 0):
        missed.append("frames dropped on a real-time source")
    if not events:
        missed.append("no clip delivered")
    if peak / 2**20 > MAX_RSS_MB:
        missed.append(f"peak RSS over {MAX_RSS_MB} MB")
    if args.viewer and viewer is not None:
        (_, idle_cpu, idle_wall), (_, view_cpu, view_wall) = phases
        idle, watched = idle_cpu / idle_wall, view_cpu / view_wall
        print(f"no viewer        {idle:.1%} of one core ({args.seconds:.0f} s)")
        print(f"one viewer       {watched:.1%} of one core ({args.seconds:.0f} s; {viewer.pictures} pictures, "
              f"{viewer.bytes / max(1, viewer.pictures) / 1024:.0f} KB each, {viewer.pictures / view_wall:.1f}/s)")
        added = watched - idle
        print(f"viewer cost      {added:+.1%} of one core (budget {VIEWER_BUDGET:.0%})")
        if added > VIEWER_BUDGET:
            missed.append(f"one viewer adds over {VIEWER_BUDGET:.0%} of one core")
    print("PASS" if not missed else "FAIL: " + "; ".join(missed))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
