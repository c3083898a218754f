"""How a YAML alias bomb (ten lines standing for a billion values) is met: `config validate` on it, and
a running daemon given it as a fragment in its config.d.

    python benchmarks/config_bomb.py [--max-seconds 1] [--max-rss-mb 150] [--max-growth-mb 20]

Prints `config validate`'s CPU and wall time and peak RSS, and how long the daemon took from the save
to its "reload refused" line and how much its peak RSS grew. Exits 1 on a miss: validate using more than
--max-seconds of CPU (the interpreter's start and imports included; on a loaded machine the wall time
also counts the wait for a core, so it is shown, not judged) or above --max-rss-mb (it took 729 MB and
was still going after 14 s before the bounds of edge_agent/config/yaml_limits.py), the daemon slower than
its debounce plus --max-seconds, its peak RSS grown by more than --max-growth-mb (a reload took it from
110 MB to 992 MB), or either not refusing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.web_daemon import web_daemon  # noqa: E402
from tests.hostile_yaml import ALIAS_BOMB  # noqa: E402
from tests.process_watch import peak_rss_mb, wait_for_log  # noqa: E402

DEBOUNCE_S = 0.5  # the config watcher's quiet time before it looks (service/reload.py)
REFUSED = "reload refused, keeping the running config: "


def validate(bomb: Path) -> tuple[int, float, float, float, str]:
    """`edge-agent config validate` on the bomb: (exit code, CPU seconds, wall seconds, peak RSS in MB, its
    stderr)."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "config", "validate", str(bomb)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    return proc.returncode, cpu, time.monotonic() - started, usage.ru_maxrss / 1024, err


def reload(timeout_s: float = 30.0) -> tuple[bool, float, float, float]:
    """The bomb saved into a running daemon's config.d: (refused, seconds to the refusal, peak RSS before and
    after in MB)."""
    video = ROOT / "sample_media" / "conveyor_720p30.mp4"
    with web_daemon("config-bomb-", video) as daemon:
        frag_dir = daemon.tmp / "config.d"
        frag_dir.mkdir()
        time.sleep(DEBOUNCE_S * 2)  # the folder's own event settles (an unchanged config) before the save
        before = peak_rss_mb(daemon.proc.pid)
        seen = len(daemon.log.read_text(errors="replace"))
        (frag_dir / "50-bomb.yaml").write_text(ALIAS_BOMB)
        saved = time.monotonic()
        try:
            wait_for_log(daemon.log, REFUSED, timeout_s, after=seen, poll_s=0.02)
        except AssertionError:  # not refused within timeout_s
            return False, timeout_s, before, peak_rss_mb(daemon.proc.pid)
        took = time.monotonic() - saved
        return daemon.proc.poll() is None, took, before, peak_rss_mb(daemon.proc.pid)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-seconds", type=float, default=1.0)
    ap.add_argument("--max-rss-mb", type=float, default=150.0)
    ap.add_argument("--max-growth-mb", type=float, default=20.0)
    args = ap.parse_args()
    bomb = Path(tempfile.mkdtemp(prefix="config-bomb-")) / "bomb.yaml"
    bomb.write_text(ALIAS_BOMB, encoding="utf-8")
    code, cpu, wall, rss, err = validate(bomb)
    print(f"config validate: exit {code} after {cpu:.2f} s of CPU ({wall:.2f} s wall), peak RSS {rss:.0f} MB: "
          f"{err.strip()[:160]}")
    misses = []
    if code != 78 or cpu > args.max_seconds or rss > args.max_rss_mb:
        misses.append(f"config validate: want exit 78 within {args.max_seconds:g} s of CPU under "
                      f"{args.max_rss_mb:g} MB")
    refused, took, before, after = reload()
    print(f"running daemon: {'refused' if refused else 'NOT refused'} {took:.2f} s after the save "
          f"({DEBOUNCE_S:g} s of it the watcher's debounce), peak RSS {before:.0f} -> {after:.0f} MB")
    if not refused or took > DEBOUNCE_S + args.max_seconds or after - before > args.max_growth_mb:
        misses.append(f"reload: want refused within {DEBOUNCE_S + args.max_seconds:g} s, peak RSS grown under "
                      f"{args.max_growth_mb:g} MB, the daemon still running")
    for miss in misses:
        print(f"MISS: {miss}", file=sys.stderr)
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
