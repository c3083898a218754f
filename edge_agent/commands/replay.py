"""`edge-agent replay`: run the whole pipeline on recorded videos, then report.

The technician's and the test suite's way to see what the agent would do with a camera:
same detector, same clips, same delivery, on a file instead of a live source.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import stat
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent import const
from edge_agent.commands.common import add_config_arg, load_config_or_exit, stop_on_signals
from edge_agent.commands.ownership import Owner, act_as_state_owner
from edge_agent.delivery import contract
from edge_agent.delivery.sinks import ClipSink, FolderSink, TeeSink
from edge_agent.logs import setup_logging

if TYPE_CHECKING:
    from edge_agent.pipeline.events import EventSnapshot
    from edge_agent.pipeline.wiring import Pipeline, PipelineStatus

log = logging.getLogger(__name__)

DEFAULT_OUTPUT_DIR = "clips"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "replay", help="run the pipeline on recorded video files",
        description="Detect CIDs in recorded videos, cut a clip around each and deliver them as the daemon "
        "would. With no upload.url (or --no-upload) clips and their metadata go to --output-dir.")
    add_config_arg(p)
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files, played one after another")
    p.add_argument("--realtime", action="store_true", help="pace frames at recorded speed (source.realtime)")
    p.add_argument("--no-upload", action="store_true", help="do not upload; keep clips in --output-dir")
    p.add_argument("--output-dir", metavar="DIR",
                   help=f"keep clips and metadata here (default ./{DEFAULT_OUTPUT_DIR} when not uploading)")
    p.add_argument("--report", metavar="FILE", help="write a JSON report of the run ('-' for stdout)")
    p.add_argument("--drain-timeout", type=float, default=60.0, metavar="S",
                   help="seconds to wait for the spool to deliver everything (0: don't wait; default 60)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary table")
    p.set_defaults(func=run_replay)


# What a path is when it is not a regular file, for "not a regular video file (a ...)"
_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a pipe"),
          (stat.S_ISSOCK, "a socket"))


def _unreadable(video: str, owner: Owner | None) -> str:
    """Why `video` cannot be replayed ("" when it can), in the words of the user this runs as. Only a
    regular file is replayed: a device (`/dev/zero` never ends, `/dev/null` holds nothing) or a pipe
    would be read to its end to count its frames before playing it, and a folder is not a video."""
    try:
        mode = os.stat(video).st_mode
        if stat.S_ISDIR(mode):
            return "a folder, not a regular video file: give the video files in it (e.g. FOLDER/*.mp4)"
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "not a file")
            return f"not a regular video file ({kind}): give a video file (a camera is source.kind v4l2 or pipe)"
        with open(video, "rb"):
            return ""
    except FileNotFoundError:
        return "no such file"
    except PermissionError:
        if owner is None:
            return "permission denied"
        return (f"{owner.name} (the owner of {owner.decided_by}, which this command runs as) cannot read it: "
                "copy it where that user can read it (e.g. /tmp)")
    except OSError as exc:
        return exc.strerror or str(exc)


def _count_frames(paths: list[str]) -> int | None:
    import av

    total = 0
    for path in paths:
        try:
            with av.open(path) as c:
                v = c.streams.video[0]
                n = v.frames
                if not n and v.duration and v.average_rate:
                    n = int(float(v.duration * v.time_base) * float(v.average_rate))
                if not n:
                    return None
                total += n
        except (av.error.FFmpegError, IndexError, OSError):
            return None
    return total


class ReplayReport:
    """The run's history for the report: every event (an event log that keeps them all, which the
    pipeline and the uploader both record into) and every no-read."""

    def __init__(self) -> None:
        from edge_agent.pipeline.events import EventLog

        self._lock = threading.Lock()
        self.events = EventLog(keep=None)
        self.noreads: list[dict[str, Any]] = []

    def on_noread(self, nr: Any) -> None:
        """A code seen but not read: when, where in the frame, and the image kept of it (None: not kept)."""
        image = nr.image if isinstance(nr.image, str) else None  # a kept entry names its file
        with self._lock:
            self.noreads.append({"t": round(nr.t, 3), "at": contract.rfc3339(nr.wall),
                                 "position": [list(p) for p in nr.polygon], "error": nr.error, "image": image})

    def sorted(self) -> list[EventSnapshot]:
        """The events that reached the sink (made into a clip or sent without one), by detection time."""
        return sorted((e for e in self.events.snapshot() if e.queued is not None), key=lambda r: r.detected_t)


def run_replay(args: argparse.Namespace) -> int:
    from edge_agent.app import Agent
    from edge_agent.delivery.spool import SpoolBusy, SpoolError, SpoolTooNew
    from edge_agent.pipeline.noreads import noreads_dir

    cfg = load_config_or_exit(args, strict_source=False)
    upload = bool(cfg.upload.url) and not args.no_upload
    try:  # the report is the operator's file: made by whoever typed the command, before it becomes another user
        report_file = None
        if args.report and args.report != "-":
            # its folder too, as --output-dir's is (`--output-dir out --report out/report.json`)
            Path(args.report).parent.mkdir(parents=True, exist_ok=True)
            report_file = open(args.report, "w", encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        print(f"edge-agent replay: --report {args.report}: {exc.strerror or exc}", file=sys.stderr)
        return const.EXIT_CANTCREAT
    # the spool (when delivering) and the no-read folder are the service's: root writes them as their owner
    owner = act_as_state_owner("replay", [cfg.spool.dir, noreads_dir(cfg)] if upload else [noreads_dir(cfg)])
    setup_logging(cfg.log_level)
    unreadable = [(v, why) for v in args.videos if (why := _unreadable(v, owner))]
    if unreadable:
        for v, why in unreadable:
            print(f"edge-agent replay: {v}: {why}", file=sys.stderr)
        return const.EXIT_NOINPUT
    source = cfg.source.model_copy(update={"kind": "file", "path": args.videos[0],
                                           "realtime": args.realtime or cfg.source.realtime, "loop": False})
    cfg = cfg.model_copy(update={"source": source})
    try:
        folder = FolderSink(args.output_dir or DEFAULT_OUTPUT_DIR) if args.output_dir or not upload else None
        if folder is not None and not os.access(folder.folder, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    except OSError as exc:
        print(f"edge-agent replay: output folder {args.output_dir or DEFAULT_OUTPUT_DIR}: {exc.strerror or exc}"
              + (f" for {owner.name}, the user this runs as" if owner else "")
              + "; give --output-dir a folder it can write (e.g. under /tmp)", file=sys.stderr)
        return const.EXIT_CANTCREAT
    listener = ReplayReport()
    exit_code = const.EXIT_OK
    dropped: dict[str, int] = {}  # reads the spool gave up in this run, by reason (none without one)
    with Agent(cfg) as agent:
        uploader = None
        sink: ClipSink
        if upload:
            try:
                spool = agent.spool()
            except SpoolTooNew as exc:
                print(f"edge-agent replay: {exc}", file=sys.stderr)
                return const.EXIT_CANTCREAT
            except SpoolBusy as busy:
                print(f"edge-agent replay: {busy}; replay into another spool "
                      "(EDGE_AGENT__SPOOL__DIR=/tmp/replay-spool) or without upload (--no-upload)", file=sys.stderr)
                return const.EXIT_QUEUED
            except (SpoolError, OSError) as exc:
                print(f"edge-agent replay: spool {cfg.spool.dir}: {exc} (point spool.dir at a writable folder, "
                      "or use --no-upload)", file=sys.stderr)
                return const.EXIT_CANTCREAT
            uploader = agent.uploader(on_result=listener.events.upload_result)
            sink = TeeSink(spool, folder) if folder else spool
        else:
            assert folder is not None
            sink = folder
        pipeline = agent.pipeline(sink, videos=args.videos, events=listener.events, on_noread=listener.on_noread)
        total = _count_frames(args.videos)
        stop = stop_on_signals()  # the recording in progress is cut short and kept; exit 0
        pipeline.start()
        _progress(pipeline, total, quiet=args.quiet, stop=stop)
        pipeline.wait()
        status = pipeline.status()
        if stop.is_set():
            print(f"edge-agent replay: stopped at frame {status.capture.frames}"
                  + (f" of {total}" if total else "") + "; the clip in progress was cut short and kept",
                  file=sys.stderr)
        if uploader is not None:
            if args.drain_timeout > 0 and not stop.is_set():
                uploader.drain(args.drain_timeout)
            spool_status = agent.spool().status()
            dropped = spool_status.dropped_since_open
            remaining = spool_status.clips
            if remaining:
                print(f"edge-agent replay: {remaining} clip(s) still queued in {cfg.spool.dir}; "
                      "they will be sent by `edge-agent run` or `edge-agent spool flush`", file=sys.stderr)
                if not stop.is_set():  # a requested stop leaves them queued on purpose
                    exit_code = const.EXIT_QUEUED
    report = _report(listener, status, dropped, folder)
    if args.report:
        text = json.dumps(report, indent=2) + "\n"
        if report_file is None:
            sys.stdout.write(text)
        else:
            with report_file:
                report_file.write(text)
    if not args.quiet:
        _summary(report, status, upload, folder)
    if status.failure is not None:
        print(f"edge-agent replay: the {status.failure.stage} stage failed: {status.failure.reason}", file=sys.stderr)
        return status.failure.exit_code
    if status.capture.source_error and status.capture.frames == 0:
        print(f"edge-agent replay: no video could be read: {status.capture.source_error}", file=sys.stderr)
        return const.EXIT_DATAERR
    lost = _lost(report, stopped=stop.is_set())
    if lost:
        print(f"edge-agent replay: {lost}", file=sys.stderr)
        if report["dropped"].get("disk_full") or any("min_free" in k for k in report["dropped"]):
            return const.EXIT_CANTCREAT
        return exit_code or const.EXIT_FAILED
    return exit_code


def _lost(report: dict[str, Any], stopped: bool = False) -> str:
    """What the run did not deliver whole, in words; empty when everything went through. A requested
    stop's own cost (clips its budget left without video) is not a loss: the stop was asked for."""
    from edge_agent.pipeline.clip_maker import STOP_BUDGET_ERROR

    parts = []
    events = report["events"]
    novideo = [e["clip"]["error"] for e in events if e["clip"] and e["clip"].get("error")
               and not (stopped and e["clip"]["error"].startswith(STOP_BUDGET_ERROR))]
    if novideo:
        parts.append(f"{len(novideo)} of {len(events)} CID(s) went out without video: {novideo[0]}")
    if report["dropped"]:
        parts.append("clips dropped by the spool: " + ", ".join(f"{k} {v}" for k, v in report["dropped"].items()))
    if report["quarantined"]:
        parts.append(f"{report['quarantined']} clip(s) refused by the server and quarantined "
                     "(`edge-agent spool list`, then `edge-agent spool requeue` once fixed)")
    if report["refused"]:
        parts.append(f"{report['refused']} clip(s) not kept by the spool")
    return "; ".join(parts)


def _progress(pipeline: Pipeline, total: int | None, quiet: bool, stop: threading.Event) -> None:
    """A progress bar on a terminal (tqdm switches itself off when stderr is not one)."""
    from tqdm import tqdm

    with tqdm(total=total, unit="frame", disable=True if quiet else None, leave=False,
              dynamic_ncols=True) as bar:
        while not pipeline.wait(0.25):
            if stop.is_set() or pipeline.failures.failure is not None:  # a stage that died ends the replay
                pipeline.stop()
                break
            st = pipeline.status()
            bar.update(st.capture.frames - bar.n)
            bar.set_postfix(cids=st.detect.events, refresh=False)
        bar.update(pipeline.status().capture.frames - bar.n)


def _report(listener: ReplayReport, status: PipelineStatus, dropped: dict[str, int],
            folder: FolderSink | None) -> dict[str, Any]:
    from edge_agent.pipeline.events import Delivery

    events = []
    for rec in listener.sorted():
        clip: dict[str, Any] | None = dict(rec.clip) if rec.clip else None
        if clip is not None and folder is not None and not rec.clip_error:
            clip["file"] = str(folder.clip_path(rec.event_id))
        events.append({"event_id": rec.event_id, "cid": rec.cid, "detected_at": rec.detected_at,
                       "clip": clip, "uploaded": rec.uploaded,
                       "upload_result": rec.upload.value if rec.upload is not None else None,
                       "clip_ms": rec.clip_ms})
    return {
        "frames": status.capture.frames,
        "elapsed_s": round(status.elapsed_s, 3),
        "frames_decoded": status.decode.decoded,
        "frames_undecoded": status.decode.undecoded,  # the ends of keyframe intervals (detector.max_blind_s)
        "frames_analysed": status.detect.frames_analysed,
        "sightings": status.detect.sightings,
        "events": events,
        "uploaded": sum(1 for e in events if e["uploaded"]),
        "quarantined": sum(1 for rec in listener.sorted() if rec.upload is Delivery.QUARANTINED),
        "refused": sum(1 for rec in listener.sorted() if not rec.queued),
        "dropped": {k: v for k, v in dropped.items() if v},
        "rejected": status.detect.rejected,
        "noreads": list(listener.noreads),
    }


def _summary(report: dict[str, Any], status: PipelineStatus, upload: bool, folder: FolderSink | None) -> None:
    frames, elapsed = report["frames"], report["elapsed_s"]
    clips = sum(1 for e in report["events"] if e["clip"] and not e["clip"].get("error"))
    rows = [
        ("frames", f"{frames}"),
        ("fps", f"{frames / elapsed:.1f}" if elapsed else "-"),
        ("elapsed s", f"{elapsed:.2f}"),
        ("frames analysed", f"{status.detect.frames_analysed}"),
        ("frames not decoded", f"{status.decode.undecoded} (ends of keyframe intervals: detector.max_blind_s)"),
        ("sightings", f"{status.detect.sightings}"),
        ("events (CIDs)", f"{len(report['events'])}"),
        ("clips", f"{clips}"),
        ("uploaded", f"{report['uploaded']}" if upload else "off"),
        ("rejected payloads", f"{report['rejected']}"),
        ("no-reads", f"{len(report['noreads'])}"),
    ]
    if folder is not None:
        rows.append(("clips folder", str(folder.folder)))
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    for e in report["events"]:
        clip = e["clip"] or {}
        state = "error: " + clip["error"] if clip.get("error") else f"{clip.get('duration_s', 0):.2f} s"
        print(f"  {e['detected_at']}  {e['cid']:<24} {state:<10} {'uploaded' if e['uploaded'] else ''}")
    sys.stdout.flush()
