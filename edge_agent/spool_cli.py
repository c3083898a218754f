"""`edge-agent spool status|list|flush|requeue`: what waits for delivery, and delivering it now."""

from __future__ import annotations

import argparse
import json
import sys
import time

from . import __version__, const
from .cli_common import add_config_arg, load_config_or_exit
from .logs import setup_logging
from .metrics import Metrics


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("spool", help="inspect and deliver the queue of clips",
                       description="The spool holds clips until the edge server has acknowledged them.")
    ss = p.add_subparsers(dest="spool_command", required=True, metavar="ACTION")
    st = ss.add_parser("status", help="clips and bytes waiting, the oldest, the last error")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=cmd_status)
    ls = ss.add_parser("list", help="one line per waiting clip")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=cmd_list)
    fl = ss.add_parser("flush", help="deliver now; exit 0 when empty, 75 when clips remain")
    fl.add_argument("--timeout", type=float, default=60.0, metavar="S", help="give up after S seconds (default 60)")
    fl.set_defaults(func=cmd_flush)
    rq = ss.add_parser("requeue", help="move quarantined clips back into the queue")
    rq.set_defaults(func=cmd_requeue)
    for sp in (st, ls, fl, rq):
        add_config_arg(sp)


def _open(args: argparse.Namespace):  # noqa: ANN202 - returns (cfg, Spool)
    from .spool import Spool

    cfg = load_config_or_exit(args, strict_source=False)
    setup_logging("WARNING" if args.spool_command in ("status", "list") else cfg.log_level)
    return cfg, Spool(cfg.spool, Metrics())


def _age(ts: float | None) -> str:
    if ts is None:
        return "-"
    s = max(0, time.time() - ts)
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


def cmd_status(args: argparse.Namespace) -> int:
    cfg, spool = _open(args)
    st = spool.status()
    spool.close()
    if args.json:
        print(json.dumps({"dir": cfg.spool.dir, "clips": st.clips, "bytes": st.bytes, "oldest_at": st.oldest_at,
                          "last_error": st.last_error, "quarantined": st.quarantined}))
        return 0
    rows = [("spool", cfg.spool.dir), ("clips waiting", str(st.clips)), ("bytes", f"{st.bytes}"),
            ("oldest", _age(st.oldest_at) + (" old" if st.oldest_at else "")),
            ("last error", st.last_error or "-"), ("quarantined", str(st.quarantined)),
            ("upload.url", cfg.upload.url or "- (not set: clips wait)")]
    w = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{w}}  {v}" for k, v in rows))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    _, spool = _open(args)
    entries = spool.entries()
    spool.close()
    if args.json:
        print(json.dumps([{"event_id": e.event_id, "cid": e.cid, "size_bytes": e.size_bytes,
                           "created_at": e.created_at, "attempts": e.attempts, "last_error": e.last_error}
                          for e in entries]))
        return 0
    for e in entries:
        print(f"{e.event_id}  {e.cid:<24} {e.size_bytes:>10} B  {_age(e.created_at):>8}  attempts={e.attempts}"
              + (f"  {e.last_error}" if e.last_error else ""))
    if not entries:
        print("spool is empty")
    return 0


def cmd_flush(args: argparse.Namespace) -> int:
    from .uploader import Uploader

    cfg, spool = _open(args)
    if not cfg.upload.url:
        print("edge-agent spool flush: upload.url is not set; nothing can be delivered", file=sys.stderr)
        spool.close()
        return const.EXIT_QUEUED
    up = Uploader(spool, cfg.upload, Metrics(), __version__)
    empty = up.drain(args.timeout)
    left = spool.status().clips
    spool.close()
    print("spool is empty" if empty else f"{left} clip(s) still queued")
    return 0 if empty else const.EXIT_QUEUED


def cmd_requeue(args: argparse.Namespace) -> int:
    _, spool = _open(args)
    n = spool.requeue()
    spool.close()
    print(f"requeued {n} clip(s)")
    return 0
