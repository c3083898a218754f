"""Power cuts under a running agent: every read detected before a cut reaches the server once, whole.

    python benchmarks/powercut.py --lazyfs PATH/TO/lazyfs [--cuts 55] [--seed 1] [--work DIR]
    (or LAZYFS=PATH/TO/lazyfs python benchmarks/powercut.py)

The spool lives on LazyFS (github dsrhaslab/lazyfs), a FUSE file system that keeps every write it was not
asked to fsync in a cache of its own and drops it on `lazyfs::clear-cache`: what an SD card holds after
the power goes is what was fsynced. A real `edge-agent run` daemon reads a pipe camera that never shows
a label twice (tests/label_camera.py, its counter outside LazyFS) and delivers to a real HTTP server on
127.0.0.1 that records every request (tests/flaky_server.py). Each cut: the agent and its camera are
killed with SIGKILL, LazyFS's unsynced data is dropped, LazyFS is unmounted and mounted again, and the
agent started again, which must come up (its "spool ready" line and READY=1 on NOTIFY_SOCKET).

Cuts fall at random moments and in chosen windows, each aimed by what the harness can see, never by a
delay inside the agent:
  random          a random moment after READY
  detect          just after a `detected cid=` line
  clip-write      while tmp/<id>.mp4.part is being written (inotify on the spool's tmp/)
  queue-insert    at the first write of the queue's WAL once the backlog is delivered (a new read's commit)
  upload-mid-body the server has half the body (it stalls there)
  upload-stored   the server stored the clip and holds its reply back
  delete          between the sidecar's and the video's unlink after delivery (inotify on clips/)
and at exact file-system calls, where LazyFS itself dies (its own crash fault: everything unsynced is
gone with it) just before the call, then the agent is killed:
  fs-fsync-clip   fsync of tmp/<id>.mp4.part
  fs-rename-meta  the sidecar's rename into clips/ (a put's commit point)
  fs-fsync-wal    fsync of queue.sqlite3-wal (any commit)
  fs-unlink-clip  unlink of clips/<id>.mp4 (the delete after delivery)

After the last cut the agent runs once more without a cut: it reads two labels, then the camera shows no
more (a stop file), the agent drains and stops on SIGTERM. The server's records are then judged
(tests/read_ledger.py): reads lost (split into those a cut took before their clip was queued, those lost
although queued, and those of the run with no cut), ghost reads (one CID under two event ids, or a
delivery no agent logged of a CID the camera never showed; one it did show, delivered once, is a read
committed just before a cut took its log line, counted apart), corrupt videos (sha256, size, PyAV
decode). Prints a table and exits 1 on any loss, ghost or corrupt video, or an agent that did not come
up; 69 when LazyFS or FUSE is not usable here.

Building LazyFS on Debian: its CMake fetches toml11 and spdlog; Debian's libtoml11-dev and libspdlog-dev
are the same versions (find_package(toml11), find_package(spdlog) in their place), plus libfuse3-dev,
fuse3, cmake and g++. LazyFS's statfs reports 0 bytes free, so the spool runs with min_free_bytes 0.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import spool_watch  # noqa: E402
from tests.flaky_server import FlakyServer  # noqa: E402
from tests.kill_windows import arm  # noqa: E402
from tests.label_camera import agent_config, labels_shown  # noqa: E402
from tests.read_ledger import detections, judge, not_durable, queued, read_log  # noqa: E402
from tests.receiver_fixture import free_port  # noqa: E402

EX_UNAVAILABLE = 69  # sysexits: LazyFS or FUSE not usable here
HARNESS_WINDOWS = ("random", "detect", "clip-write", "queue-insert", "upload-mid-body", "upload-stored", "delete")
# LazyFS crash faults: (op, regex on the path LazyFS sees; for rename the destination)
FS_WINDOWS = {
    "fs-fsync-clip": ("fsync", r"/tmp/[^/]*\.mp4\.part$"),
    "fs-rename-meta": ("rename", r"/clips/[^/]*\.json$"),
    "fs-fsync-wal": ("fsync", r"queue\.sqlite3-wal$"),
    "fs-unlink-clip": ("unlink", r"/clips/[^/]*\.mp4$"),
}
WINDOWS = HARNESS_WINDOWS + tuple(FS_WINDOWS)
BUILD_HINT = ("build it from github dsrhaslab/lazyfs with Debian's libfuse3-dev fuse3 cmake g++ libtoml11-dev "
              "libspdlog-dev (find_package(toml11)/find_package(spdlog) in place of its FetchContent), then pass "
              "--lazyfs PATH or set LAZYFS=PATH")


def fail_unavailable(why: str) -> None:
    print(f"powercut: {why}", file=sys.stderr)
    raise SystemExit(EX_UNAVAILABLE)


# --- LazyFS -----------------------------------------------------------------------------------------

class LazyFs:
    """One LazyFS mount: `root` on disk, `mnt` what the agent sees. Mounted again after every cut."""

    def __init__(self, binary: Path, work: Path, cache: str):
        self.binary = binary
        self.root, self.mnt = work / "lazyfs.root", work / "lazyfs.mnt"
        self.fifo, self.done_fifo = work / "lazyfs.faults", work / "lazyfs.done"
        self.config = work / "lazyfs.toml"
        self.log = work / "lazyfs.log"
        for d in (self.root, self.mnt):
            d.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            f'[faults]\nfifo_path="{self.fifo}"\nfifo_path_completed="{self.done_fifo}"\n'
            f'[cache]\napply_eviction=false\n[cache.simple]\ncustom_size="{cache}"\nblocks_per_page=1\n'
            '[filesystem]\nlog_all_operations=false\nlogfile=""\n', encoding="utf-8")
        self.proc: subprocess.Popen[bytes] | None = None
        self._done_fd: int | None = None

    def mount(self) -> None:
        for fifo in (self.fifo, self.done_fifo):
            fifo.unlink(missing_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(self.binary), str(self.mnt), "--config-path", str(self.config), "-o", "modules=subdir",
                 "-o", f"subdir={self.root}", "-f"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace").strip().splitlines()[-3:]
                fail_unavailable(f"LazyFS exited {self.proc.returncode} at mount: {' / '.join(tail)}")
            # LazyFS opens the completion FIFO for writing and waits for a reader: be that reader at once
            if self._done_fd is None and self.done_fifo.exists():
                self._done_fd = os.open(self.done_fifo, os.O_RDONLY | os.O_NONBLOCK)
            if self._done_fd is not None and os.path.ismount(self.mnt):
                return
            time.sleep(0.02)
        fail_unavailable(f"LazyFS did not mount {self.mnt} in 20 s (see {self.log})")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self, line: str) -> None:
        fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, line.encode() + b"\n")
        finally:
            os.close(fd)

    def clear_cache(self) -> None:
        """Drop every write not fsynced, and wait until LazyFS says it is done."""
        assert self._done_fd is not None
        self.command("lazyfs::clear-cache")
        got = b""
        deadline = time.monotonic() + 30
        while b"finished::clear-cache" not in got:
            if time.monotonic() > deadline or not self.alive:
                raise RuntimeError("LazyFS did not confirm lazyfs::clear-cache")
            select.select([self._done_fd], [], [], 0.05)
            with contextlib.suppress(BlockingIOError):
                got += os.read(self._done_fd, 256)

    def crash_before(self, op: str, regex: str) -> None:
        """LazyFS kills itself just before `op` on a matching path (for rename: the destination)."""
        if op == "rename":  # LazyFS checks the destination only when a source pattern is given too
            self.command(f"lazyfs::crash::timing=before::op=rename::from_rgx=.::to_rgx={regex}")
        else:
            self.command(f"lazyfs::crash::timing=before::op={op}::from_rgx={regex}")

    def unmount(self) -> None:
        if self._done_fd is not None:
            os.close(self._done_fd)
            self._done_fd = None
        lazy = [] if self.alive else ["-z"]  # a crashed LazyFS leaves a dead mount: detach it
        for _ in range(50):
            res = subprocess.run(["fusermount3", "-u", *lazy, str(self.mnt)], capture_output=True, check=False)
            if res.returncode == 0 or not os.path.ismount(self.mnt):
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"cannot unmount {self.mnt}: {res.stderr.decode().strip()}")
        if self.proc is not None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- the agent ---------------------------------------------------------------------------------------

class Notify:
    """NOTIFY_SOCKET, as systemd gives it: READY=1 once frames flow."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)

    def ready_seen(self) -> bool:
        while True:
            try:
                msg = self.sock.recv(4096).decode(errors="replace")
            except BlockingIOError:
                return False
            if "READY=1" in msg.splitlines():
                return True


@dataclass
class Life:
    """One run of the agent, from its start to its cut."""

    n: int
    window: str
    log: Path
    proc: subprocess.Popen[bytes]
    up_s: float | None = None
    landed: bool = False  # the cut fell in its window (else it fell at the window's timeout)
    exited: int | None = None  # the agent ended by itself before the cut
    reads: dict[str, str] = field(default_factory=dict)
    queued: set[str] = field(default_factory=set)

    def log_text(self) -> str:
        return read_log(self.log)

    def gone(self) -> bool:
        return self.proc.poll() is not None


def start_agent(n: int, window: str, cfg: Path, work: Path, notify: Notify) -> Life:
    log = work / f"agent-{n:03d}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NOTIFY_SOCKET": str(notify.path)}
    with log.open("wb") as f:
        # its own session: a power cut takes the agent and its camera at once (killpg)
        proc = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "run", "--config", str(cfg)], cwd=work,
                                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=f,
                                start_new_session=True)
    return Life(n, window, log, proc)


def wait_up(life: Life, notify: Notify, timeout: float) -> bool:
    """The agent is up: its spool recovered ("spool ready") and frames flow (READY=1)."""
    started = time.monotonic()
    spool_ready = ready = False
    while time.monotonic() - started < timeout and life.proc.poll() is None:
        spool_ready = spool_ready or "spool ready" in life.log_text()
        ready = ready or notify.ready_seen()
        if spool_ready and ready:
            life.up_s = time.monotonic() - started
            return True
        time.sleep(0.05)
    return False


def power_cut(life: Life) -> None:
    """SIGKILL to the agent's whole session: the agent and its camera go at once, as in a power cut."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(life.proc.pid, signal.SIGKILL)
    life.proc.wait()


# --- aiming a cut -------------------------------------------------------------------------------------

def aim(window: str, life: Life, spool: Path, server: FlakyServer, fs: LazyFs, rng: random.Random,
        timeout: float) -> bool:
    """Wait for `window` to open (True), or for `timeout` (False); the caller cuts either way."""
    gone = life.gone
    if window == "random":
        time.sleep(rng.uniform(0.2, 8.0))
        return True
    if window == "detect":
        ok = spool_watch.log_line(life.log, "detected cid=", timeout, gone)
        time.sleep(rng.uniform(0.0, 0.25))
        return ok
    if window in ("upload-mid-body", "upload-stored"):
        is_open = arm(server, "mid-body" if window == "upload-mid-body" else "stored-unanswered")
        deadline = time.monotonic() + timeout
        while not is_open() and not gone() and time.monotonic() < deadline:
            time.sleep(0.002)
        return is_open()
    if window in FS_WINDOWS:
        fs.crash_before(*FS_WINDOWS[window])
        deadline = time.monotonic() + timeout
        while fs.alive and not gone() and time.monotonic() < deadline:
            time.sleep(0.002)
        return not fs.alive
    if window == "clip-write":
        return spool_watch.clip_write(spool, rng, timeout, gone)
    if window == "queue-insert":
        return spool_watch.queue_insert(spool, timeout, gone)
    if window == "delete":
        return spool_watch.delete_after_delivery(spool, timeout, gone)
    raise ValueError(window)


# --- the run --------------------------------------------------------------------------------------------

def schedule(cuts: int, windows: list[str], rng: random.Random) -> list[str]:
    """Every window in turn (each at least cuts // len(windows) times), shuffled."""
    plan = [windows[i % len(windows)] for i in range(cuts)]
    rng.shuffle(plan)
    return plan


def drain(life: Life, server: FlakyServer, port: int, timeout: float) -> None:
    """Wait until the agent's spool has been empty for 2 s with every read of this run delivered (what a cut
    lost never comes), or `timeout`."""
    deadline = time.monotonic() + timeout
    empty_since: float | None = None
    while time.monotonic() < deadline and life.proc.poll() is None:
        done = spool_watch.spool_clips(port) == 0 and set(detections(life.log_text())) <= set(server.delivered)
        empty_since = (empty_since or time.monotonic()) if done else None
        if empty_since is not None and time.monotonic() - empty_since >= 2.0:
            return
        time.sleep(0.25)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lazyfs", type=Path, default=os.environ.get("LAZYFS") or None,
                    help="the lazyfs binary (env LAZYFS)")
    ap.add_argument("--cuts", type=int, default=55)
    ap.add_argument("--min-cuts", type=int, default=50, help="fewer landed cuts than this is a failed run")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", type=Path, help="keep everything here (default: a temporary folder, removed)")
    ap.add_argument("--windows", type=lambda v: v.split(","), default=list(WINDOWS),
                    help=f"comma-separated, of: {','.join(WINDOWS)} (default: all)")
    ap.add_argument("--cache", default="128mb", help="LazyFS's cache size")
    ap.add_argument("--window-timeout", type=float, default=30.0)
    ap.add_argument("--up-timeout", type=float, default=60.0)
    ap.add_argument("--drain-timeout", type=float, default=120.0)
    args = ap.parse_args()
    if args.lazyfs is None or not args.lazyfs.is_file() or not os.access(args.lazyfs, os.X_OK):
        fail_unavailable(f"no LazyFS binary at {args.lazyfs or '(none given)'}: {BUILD_HINT}")
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        fail_unavailable("FUSE is not usable here: /dev/fuse and fusermount3 (apt install fuse3) are needed")
    if unknown := set(args.windows) - set(WINDOWS):
        ap.error(f"unknown window(s) {', '.join(sorted(unknown))}; known: {', '.join(WINDOWS)}")
    rng = random.Random(args.seed)
    work = args.work or Path(tempfile.mkdtemp(prefix="powercut-"))
    work.mkdir(parents=True, exist_ok=True)
    fs = LazyFs(args.lazyfs.resolve(), work, args.cache)
    spool = fs.mnt / "spool"
    lives: list[Life] = []
    plan = schedule(args.cuts, args.windows, rng)
    started = time.monotonic()
    with FlakyServer(stall_s=2.0) as server:
        port = free_port()
        # LazyFS's statfs says 0 bytes free: the spool's min_free_bytes is 0 (agent_config's)
        cfg = agent_config(work, spool, server.url, port, device_id="powercut", pre_roll_s=1.0, post_roll_s=1.5,
                           backoff_s=0.2)
        notify = Notify(work / "notify.sock")
        try:
            for n, window in enumerate([*plan, "drain"]):
                fs.mount()
                life = start_agent(n, window, cfg, work, notify)
                lives.append(life)
                if not wait_up(life, notify, args.up_timeout):
                    life.exited = life.proc.poll()
                    print(f"cut {n}: the agent did not come up (exit {life.exited}); see {life.log}", file=sys.stderr)
                elif window == "drain":
                    for _ in range(2):
                        spool_watch.log_line(life.log, "detected cid=", args.window_timeout, life.gone)
                    (work / "no-more-labels").touch()
                    drain(life, server, port, args.drain_timeout)
                    life.proc.send_signal(signal.SIGTERM)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        life.exited = life.proc.wait(30)
                else:
                    life.landed = aim(window, life, spool, server, fs, rng, args.window_timeout)
                    life.exited = life.proc.poll()
                if life.proc.poll() is None:
                    power_cut(life)
                server.script = []
                life.reads, life.queued = detections(life.log_text()), queued(life.log_text())
                if fs.alive:
                    fs.clear_cache()
                fs.unmount()
                aimed = "landed" if life.landed else "-" if window == "drain" else "missed"
                print(f"cut {n:3d} {window:16s} {aimed:6s} "
                      f"reads={len(life.reads)} up_s={life.up_s or 0:.1f}", file=sys.stderr, flush=True)
        finally:
            with contextlib.suppress(Exception):
                for life in lives:
                    if life.proc.poll() is None:
                        power_cut(life)
                if os.path.ismount(fs.mnt):
                    fs.unmount()
    return report(lives, server, fs, work, args, time.monotonic() - started)


def report(lives: list[Life], server: FlakyServer, fs: LazyFs, work: Path, args: argparse.Namespace,
           took_s: float) -> int:
    cut_lives = [x for x in lives if x.window != "drain"]
    detected = {e: c for x in lives for e, c in x.reads.items()}
    verdict = judge(detected, server.delivered, [s for s in server.seen if s.complete], labels_shown(work))
    not_up = [x.n for x in lives if x.up_s is None]
    # an agent whose disk vanished under it (LazyFS crashed) may end by itself: only other windows count
    died = [(x.n, x.exited) for x in cut_lives if x.exited is not None and x.window not in FS_WINDOWS]
    after_queued = set(verdict.lost_after_queued({e for x in lives for e in x.queued}))
    uncut = set(lives[-1].reads) & set(verdict.lost) if lives and lives[-1].window == "drain" else set()
    before_put = set(verdict.lost) - after_queued - uncut
    drain_rc = lives[-1].exited if lives and lives[-1].window == "drain" else None
    quarantined = sorted(p.name for p in (fs.root / "spool" / "quarantine").glob("*") if p.is_file())
    print(f"\npower cuts on LazyFS: seed {args.seed}, {took_s:.0f} s, work {work}")
    print(f"{'window':17s} {'cuts':>5s} {'landed':>6s} {'reads':>6s} {'lost':>5s} {'cid-only':>8s}")
    for window in WINDOWS:
        group = [x for x in cut_lives if x.window == window]
        reads = {e for x in group for e in x.reads}
        print(f"{window:17s} {len(group):5d} {sum(x.landed for x in group):6d} {len(reads):6d} "
              f"{len(reads & set(verdict.lost)):5d} {len(reads & set(verdict.cid_only)):8d}")
    landed = sum(x.landed for x in cut_lives)
    ups = sorted(x.up_s for x in lives if x.up_s is not None)
    print(f"{'total':17s} {len(cut_lives):5d} {landed:6d} {len(detected):6d} {len(verdict.lost):5d} "
          f"{len(verdict.cid_only):8d}")
    print(f"\nreads detected {len(detected)}, delivered {verdict.delivered} ({verdict.with_video} with video, "
          f"{len(verdict.cid_only)} CID-only), lost {len(verdict.lost)}, ghosts/duplicates {len(verdict.ghosts)}, "
          f"corrupt {len(verdict.corrupt)}; requests sent again under their key {verdict.wire_duplicates}")
    refused = {e: c for x in lives for e, c in not_durable(x.log_text()).items()}
    arrived = len(set(refused) & set(server.delivered))
    print(f"reads committed but cut before their `detected` line reached the log (delivered, labels the camera "
          f"showed): {len(verdict.unlogged)}")
    print(f"reads whose commit the disk refused (an I/O error as LazyFS went down first, logged not_durable: "
          f"nothing promised): {len(refused)}, of them delivered all the same {arrived}")
    print(f"agent up after {len(ups)} of {len(lives)} starts (p50 {statistics.median(ups) if ups else 0:.1f} s, "
          f"max {max(ups, default=0):.1f} s); ended by itself before a cut: {died or 'never'}; "
          f"drain run exit {drain_rc}; files left in quarantine/: {len(quarantined)}")
    print(f"lost: {len(before_put)} cut between detection and the clip's put, {len(after_queued - uncut)} although "
          f"queued, {len(uncut)} by the run with no cut")
    for e, c in sorted(verdict.lost.items(), key=lambda kv: kv[1]):
        print(f"  lost: cid {c} clip {e}")
    for g in verdict.ghosts:
        print(f"  ghost: {g}")
    for e, why in verdict.corrupt.items():
        print(f"  corrupt: clip {e}: {why}")
    for e, why in sorted(verdict.cid_only.items()):
        print(f"  cid-only: clip {e}: {why}")
    failed = not verdict.ok or bool(not_up) or bool(died) or drain_rc != 0 or landed < args.min_cuts
    if landed < args.min_cuts:
        print(f"only {landed} cuts landed in their windows, {args.min_cuts} wanted")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    print("FAIL" if failed else "OK: every read detected before a cut delivered once, whole")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
