"""`edge-agent spool status|list|flush|requeue`: what waits for delivery, and delivering it now.

These commands are safe beside a running agent: they open the spool without its recovery (which
deletes unfinished files the agent may be writing) when the agent owns it, and `flush` then waits
for the agent's own uploader instead of racing it with a second one.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent import const
from edge_agent.commands.common import add_config_arg, load_config_or_exit
from edge_agent.commands.ownership import act_as_state_owner
from edge_agent.config import Config
from edge_agent.logs import setup_logging
from edge_agent.redact import redact_data

if TYPE_CHECKING:
    from edge_agent.app import Agent
    from edge_agent.delivery.spool import Entry, Spool
    from edge_agent.delivery.uploader import Uploader

# How often `flush` looks at the queue while the running agent delivers it.
POLL_S = 0.5
# How long `requeue` waits for the running agent to do it (its uploader looks every few seconds).
REQUEST_TIMEOUT_S = 20.0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("spool", help="inspect and deliver the queue of clips",
                       description="The spool holds clips until the edge server has acknowledged them.")
    ss = p.add_subparsers(dest="spool_command", required=True, metavar="ACTION")
    st = ss.add_parser("status", help="clips and bytes waiting, the oldest, the last error",
                       description="Clips and bytes waiting, the oldest, the last delivery error, quarantined "
                       "clips and why, free space. Safe beside the running agent.")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=cmd_status)
    ls = ss.add_parser("list", help="one line per waiting clip, oldest first, then the quarantined ones",
                       description="One line per waiting clip, oldest first (event id, CID, size, age, tries, "
                       "last error), then the quarantined clips with the reason each was set aside.")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=cmd_list)
    fl = ss.add_parser("flush", help="deliver now; exit 0 when empty, 75 when clips remain, 1 when refused",
                       description="Deliver the waiting clips now and say what happened: exit 0 when the spool "
                       "is empty, 75 when clips remain (with the last error), 1 when clips sit in quarantine "
                       "(refused by the server, or set aside). Beside a running agent, waits for its uploader "
                       "instead.")
    fl.add_argument("--timeout", type=float, default=60.0, metavar="S", help="give up after S seconds (default 60)")
    fl.set_defaults(func=cmd_flush)
    rq = ss.add_parser("requeue", help="move quarantined clips back into the queue",
                       description="Move quarantined clips back to the end of the queue, once the cause (the "
                       "URL, the server) is fixed. Exit 1 when some could not be requeued.")
    rq.set_defaults(func=cmd_requeue)
    for sp in (st, ls, fl, rq):
        add_config_arg(sp)


def _load(args: argparse.Namespace) -> Config:
    cfg = load_config_or_exit(args, strict_source=False)
    act_as_state_owner(f"spool {args.spool_command}", [cfg.spool.dir])  # before the spool is opened
    setup_logging("WARNING" if args.spool_command in ("status", "list") else cfg.log_level)
    return cfg


def _fail(exc: BaseException) -> SystemExit:
    from edge_agent.delivery.spool_files import is_disk_full
    from edge_agent.delivery.spool_format import SpoolTooNew

    print(f"edge-agent spool: {exc}", file=sys.stderr)
    return SystemExit(const.EXIT_CANTCREAT if is_disk_full(exc) or "disk full" in str(exc)
                      or isinstance(exc, SpoolTooNew) or "cannot use spool.dir" in str(exc) else const.EXIT_FAILED)


def _reader(args: argparse.Namespace) -> tuple[Config, Spool]:
    """status and list only read: no lock, no recovery, no file moved, safe beside the running agent."""
    from edge_agent.delivery.spool import Spool, SpoolError

    cfg = _load(args)
    try:
        return cfg, Spool.open_reader(cfg.spool)
    except (SpoolError, OSError) as exc:
        raise _fail(exc) from None


def _owner(args: argparse.Namespace) -> tuple[Agent, int | None]:
    """The parts of this command, from the composition root: (agent holding the spool as its owner,
    None), or (agent without a spool, the running agent's pid) when that process owns it."""
    from edge_agent.app import Agent
    from edge_agent.delivery.spool import SpoolBusy, SpoolError

    agent = Agent(_load(args))
    try:
        agent.spool()
        return agent, None
    except SpoolBusy as busy:
        return agent, busy.pid
    except (SpoolError, OSError) as exc:
        raise _fail(exc) from None


def _age(s: float | None) -> str:
    """An age for people; "?" when nobody can tell it (a clip stamped under an unsynchronised clock
    in an earlier boot)."""
    if s is None:
        return "?"
    s = max(0.0, s)
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


def _size(n: int) -> str:
    return f"{n} B" if n < 10_000 else f"{n / 1e6:.1f} MB" if n < 10**10 else f"{n / 1e9:.1f} GB"


def _owner_note(spool: Spool) -> str:
    return f"running agent (pid {spool.owner_pid})" if spool.owner_pid else "- (no agent running)"


def cmd_status(args: argparse.Namespace) -> int:
    from edge_agent import clock_sync
    from edge_agent.delivery.spool_files import disk_full_note

    cfg, spool = _reader(args)
    st = spool.status()
    head = spool.oldest()  # the first queued is the one waiting longest, whatever the clock said then
    oldest_s = spool.queued_age_s(head, clock_sync.synchronized()) if head is not None else None
    owner = _owner_note(spool)
    spool.close()
    full = disk_full_note(Path(cfg.spool.dir), st.bytes) if st.disk_full else None
    if args.json:
        print(json.dumps(redact_data({
            "dir": cfg.spool.dir, "clips": st.clips, "bytes": st.bytes, "oldest_at": st.oldest_at,
            "oldest_age_s": None if oldest_s is None else round(oldest_s, 1), "last_error": st.last_error,
            "pending": st.pending, "quarantined": st.quarantined, "quarantine_reason": st.quarantine_reason,
            "dropped": st.dropped, "videos_dropped": st.videos_dropped, "free_bytes": st.free_bytes,
            "disk_full": st.disk_full, "queue_in_memory": st.in_memory, "upload_url": cfg.upload.url})))
    else:
        dropped = ", ".join(f"{k} {v}" for k, v in st.dropped.items()) or "0"
        videos_dropped = ", ".join(f"{k} {v}" for k, v in st.videos_dropped.items()) or "0"
        oldest = ("-" if head is None else f"{_age(oldest_s)} old" if oldest_s is not None
                  else "age unknown (queued under an unsynchronised clock before this boot)")
        waiting = str(st.clips) + (f" ({st.pending} waiting for their clip)" if st.pending else "")
        rows = [("spool", cfg.spool.dir), ("reads waiting", waiting),
                ("bytes", f"{st.bytes} ({_size(st.bytes)})"),
                ("oldest", oldest),
                ("last error", st.last_error or "-"), ("quarantined", _quarantine_note(st.quarantined,
                                                                                       st.quarantine_reason)),
                ("reads dropped", dropped), ("videos dropped", f"{videos_dropped} (their reads went CID-only)"
                                              if st.videos_dropped else "0"),
                ("free space", _size(st.free_bytes) + (" (queue kept in memory until the next start)"
                                                       if st.in_memory else "")),
                ("upload.url", cfg.upload.url or "- (not set: clips wait)"), ("owned by", owner)]
        w = max(len(k) for k, _ in rows)
        print("\n".join(f"{k:<{w}}  {v}" for k, v in rows))
    if full:
        print(f"edge-agent spool: {full}", file=sys.stderr)
        return const.EXIT_CANTCREAT
    return 0


def _quarantine_note(n: int, reason: str | None) -> str:
    if not n:
        return "0"
    return f"{n} (newest: {reason or '-'}) -> fix the cause, then `edge-agent spool requeue`"


def cmd_list(args: argparse.Namespace) -> int:
    from edge_agent import clock_sync
    from edge_agent.delivery.spool_quarantine import quarantine_list

    _, spool = _reader(args)
    entries = spool.entries()
    synced_now = clock_sync.synchronized() if entries else None
    ages = [spool.queued_age_s(e, synced_now) for e in entries]
    held = quarantine_list(spool.quarantine_dir)
    spool.close()
    now = time.time()
    if args.json:
        print(json.dumps(redact_data(
            [{"event_id": e.event_id, "cid": e.cid, "size_bytes": e.size_bytes, "created_at": e.created_at,
              "age_s": None if age is None else round(age, 1), "attempts": e.attempts, "last_error": e.last_error,
              "pending": e.pending, "quarantined": False} for e, age in zip(entries, ages, strict=True)]
            + [{"event_id": q.event_id, "cid": q.cid, "size_bytes": q.size_bytes,
                "created_at": q.created_at, "attempts": None, "last_error": q.reason,
                "quarantined": True, "quarantined_at": q.quarantined_at} for q in held])))
        return 0
    if not entries and not held:
        print("spool is empty")
        return 0
    cw = max(3, *(len(e.cid) for e in entries), *(len(q.cid) for q in held))
    print(f"{'EVENT ID':<36}  {'CID':<{cw}}  {'SIZE':>9}  {'AGE':>8}  {'TRIES':>5}  LAST ERROR")
    for e, age in zip(entries, ages, strict=True):
        note = "(its clip is being made)" if e.pending else e.last_error or "-"
        print(f"{e.event_id:<36}  {e.cid:<{cw}}  {_size(e.size_bytes):>9}  {_age(age):>8}  "
              f"{e.attempts:>5}  {note}")
    for q in held:  # set aside: its age in the queue no longer counts, its wall-clock age is for people
        shown = "-" if q.created_at is None else _age(now - q.created_at)
        print(f"{q.event_id:<36}  {q.cid:<{cw}}  {_size(q.size_bytes):>9}  {shown:>8}  "
              f"{'-':>5}  QUARANTINED: {q.reason}")
    if held:
        print(f"{len(held)} quarantined clip(s) are not sent: fix the cause, then `edge-agent spool requeue`")
    return 0


def cmd_flush(args: argparse.Namespace) -> int:
    """Deliver now. Beside the running agent this waits for the agent's own uploader (a second one
    would race it for the same clip); the answer comes within --timeout + 2 s either way."""
    from edge_agent.delivery.spool import Spool
    from edge_agent.delivery.spool_files import disk_full_note
    from edge_agent.delivery.spool_quarantine import quarantine_list

    agent, agent_pid = _owner(args)
    cfg = agent.cfg
    deadline = time.monotonic() + args.timeout
    if not cfg.upload.url:
        agent.close()
        print("edge-agent spool flush: upload.url is not set; nothing can be delivered (set upload.url in the "
              "config or EDGE_AGENT__UPLOAD__URL)", file=sys.stderr)
        return const.EXIT_QUEUED
    results: Counter[str] = Counter()
    delivered: set[str] = set()
    stopped = False
    spool: Any = None
    uploader: Uploader | None = None
    waiting: set[str] = set()  # beside the agent: the clips queued when the wait began
    # events queued without video (clip.error says why): delivered, they are CIDs without video, which a
    # waiting flush cannot mend, as replay counts them (docs/architecture.md section 8: exit 1)
    novideo: dict[str, str] = {}

    def on_result(event_id: str, _cid: str, result: str) -> None:
        results.update([result])
        if result in ("delivered", "duplicate"):
            delivered.add(event_id)

    # a service manager's stop is a Ctrl-C; and Ctrl-C is one even where SIGINT was ignored at start (a
    # background job), as for every command that stops on request (commands.common.stop_on_signals)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if agent_pid is None:
            spool = agent.spool()
            novideo = _without_video(spool.entries())
            uploader = agent.uploader(on_result, thread=False)
            uploader.drain(max(0.0, deadline - time.monotonic()))
        else:
            print(f"edge-agent is running (pid {agent_pid or '?'}) and delivers the queue; "
                  f"waiting up to {args.timeout:g} s for it to empty", file=sys.stderr)
            spool = Spool.open_reader(cfg.spool)
            queued = spool.entries()  # one read: the agent changes the queue meanwhile
            waiting = {e.event_id for e in queued}
            novideo = _without_video(queued)
            while spool.status().clips and time.monotonic() < deadline:
                time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
    except KeyboardInterrupt:
        stopped = True
    if spool is None:  # stopped while opening it: nothing was sent
        agent.close()
        return 0
    left = spool.status()
    if agent_pid is None:
        # videos found damaged or gone when their turn came: their CIDs went out without them
        lost_on_the_way = uploader.status().videos_lost if uploader is not None else 0
        agent.close()
    else:
        # what the agent did with the clips that were waiting: the ones gone from the queue were delivered
        # or set aside (clips it queued meanwhile are neither, so counts alone would not tell)
        gone = waiting - {e.event_id for e in spool.entries()}
        set_aside = {q.event_id for q in quarantine_list(spool.quarantine_dir)}
        spool.close()
        results["delivered"], results["quarantined"] = len(gone - set_aside), len(gone & set_aside)
        delivered, lost_on_the_way = gone - set_aside, 0
    done = results["delivered"] + results["duplicate"]
    without = [novideo[e] for e in delivered if e in novideo]
    n_without = len(without) + lost_on_the_way
    # like replay's: a CID delivered without its video is work not done, and waiting will not do it
    short = (f"edge-agent spool flush: {n_without} of {done} CID(s) went out without video: "
             f"{without[0] if without else 'the queued video was damaged or gone'}" if n_without else "")
    quarantined = (f"; {results['quarantined']} refused by the server and quarantined "
                   f"({left.quarantine_reason or '-'}: fix the cause, then `edge-agent spool requeue`)"
                   if results["quarantined"] else "")
    # refused or set-aside clips are not delivered and will not be by waiting: a person must act (exit 1)
    held = (f"edge-agent spool flush: {left.quarantined} clip(s) in quarantine, not delivered (newest: "
            f"{left.quarantine_reason or '-'}); `edge-agent spool list` shows why, fix the cause, then "
            "`edge-agent spool requeue`" if left.quarantined else "")
    if left.clips == 0:
        print(f"delivered {done} clip(s){quarantined}; "
              + ("no clip left waiting" if quarantined else "the spool is empty"))
        for line in (held, short):
            if line:
                print(line, file=sys.stderr)
        return const.EXIT_FAILED if (held or short) and not stopped else 0
    why = f"last error: {left.last_error}" if left.last_error else "not delivered in time"
    if left.disk_full:
        why += f"; {disk_full_note(Path(cfg.spool.dir), left.bytes)}"
    print(f"delivered {done} clip(s){quarantined}; {left.clips} clip(s) still queued, {why}; they go out "
          "when the server answers (`edge-agent spool status` shows the queue)", file=sys.stderr)
    for line in (held, short):
        if line:
            print(line, file=sys.stderr)
    if stopped:
        return 0  # a requested stop leaves them queued on purpose
    return const.EXIT_FAILED if held or short else const.EXIT_QUEUED


def _without_video(entries: list[Entry]) -> dict[str, str]:
    """The queued events (`Spool.entries()`) that carry no video, each with why (its metadata's clip.error)."""
    return {e.event_id: str((e.metadata.get("clip") or {}).get("error") or "no video queued")
            for e in entries if e.video_path is None}


def cmd_requeue(args: argparse.Namespace) -> int:
    agent, agent_pid = _owner(args)
    if agent_pid is not None:
        from edge_agent.delivery.spool import Spool
        from edge_agent.delivery.spool_requests import request_requeue

        reader = Spool.open_reader(agent.cfg.spool)
        n = request_requeue(reader.root, REQUEST_TIMEOUT_S)
        left = reader.status().quarantined
        reader.close()
        if n is None:
            print(f"edge-agent spool requeue: the running agent (pid {agent_pid}) did not answer in "
                  f"{REQUEST_TIMEOUT_S:g} s; is it stuck? `systemctl status edge-agent`", file=sys.stderr)
            return const.EXIT_QUEUED
    else:
        spool = agent.spool()
        n = spool.requeue()
        left = spool.status().quarantined
        agent.close()
    print(f"requeued {n} clip(s)" + (f"; {left} could not be requeued (see quarantine/*.reason)" if left else ""))
    if left:
        print(f"edge-agent spool requeue: {left} clip(s) are still in quarantine: `edge-agent spool list` shows "
              "why; a clip without its metadata cannot be requeued", file=sys.stderr)
        return const.EXIT_FAILED
    return 0
