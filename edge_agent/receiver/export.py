"""`edge-agent receiver export`: clips as a training set for QR-code localisation, COCO or YOLO.

Each clip (an LDO of data-ingestion, or with `--source cid` a clip `POST /cid` kept) is planned from its
metadata (export_plan.py: only frames in which every code the agent saw is known, each with every box),
decoded at those times in a worker (export_frames.py: quality figures, near-duplicates, background
pictures checked with zxing-cpp, JPEGs), and recorded by the calling thread (export_state.py: names from
the clip's id and the frame's time, the clip's split, identical pictures once). A frame that cannot be
exported is an error naming its cause: the run exits 1 and the clip is tried again by the next run.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from .export_frames import FrameError, Picture, pictures
from .export_plan import epoch, plan
from .export_sources import CidSource, Entry, LdoSource, Source, cid_clips
from .export_split import SPLIT_BY, parse_fractions
from .export_state import ExportError, ExportState
from .storage import LdoStorage, StorageUnavailable, make_storage, parse_time_us
from .store import DB_FILE

log = logging.getLogger("edge_agent.receiver")

FORMATS = ("coco", "yolo")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # ids the receiver makes: ldo_<hex>_<epoch>, hex


@dataclass
class Options:
    fmt: str
    min_sharpness: float | None = None
    negatives: float = 0.1
    split_by: str = "clip"
    val: float = 0.2
    test: float = 0.0
    license: str = "proprietary"
    workers: int = 4

    def settings(self) -> dict[str, str]:
        """What an output folder is made with, all of it fixed for later runs into it."""
        return {"min_sharpness": "" if self.min_sharpness is None else repr(float(self.min_sharpness)),
                "negatives": repr(float(self.negatives)), "split_by": self.split_by, "val": repr(float(self.val)),
                "test": repr(float(self.test))}


@dataclass
class ClipResult:
    entry: Entry
    device_id: str = ""
    span_us: tuple[int, int] | None = None
    start: float | None = None  # the clip's start_at as epoch seconds (None: none, or not a time)
    info: dict[str, Any] = field(default_factory=dict)
    labels: str = "none"
    pictures: list[Picture] = field(default_factory=list)
    left_out: Counter[str] = field(default_factory=Counter)
    note: str | None = None  # why the clip gives nothing (no video, nothing labelled)
    error: str | None = None  # why it could not be exported


@dataclass
class ExportResult:
    listed: int = 0
    done_before: int = 0
    exported: int = 0
    nothing: int = 0
    failed: int = 0
    images: int = 0
    background: int = 0
    boxes: int = 0
    identical: int = 0
    bridged: int = 0  # new clips joining two clips already on different sides (a leak the set cannot undo)
    left_out: Counter[str] = field(default_factory=Counter)
    per_split: Counter[str] = field(default_factory=Counter)
    ratio: tuple[int, int] = (0, 0)  # the whole set's background pictures and pictures with codes
    asked: float = 0.0
    sides: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Exporter:
    def __init__(self, source: Source, out: Path, options: Options):
        if options.fmt not in FORMATS:
            raise ExportError(f"--format {options.fmt!r}: expected one of {', '.join(FORMATS)}")
        if options.split_by not in SPLIT_BY:
            raise ExportError(f"--split-by {options.split_by!r}: expected one of {', '.join(SPLIT_BY)}")
        if not 0 <= options.negatives <= 10:
            raise ExportError(f"--negatives {options.negatives:g}: a ratio from 0 to 10 (background pictures per "
                              "picture with codes)")
        try:
            parse_fractions(options.val, options.test)
        except ValueError as exc:
            raise ExportError(str(exc)) from None
        self.source = source
        self.out = out
        self.options = options
        self.state = ExportState(out, options.fmt, options.settings(), options.negatives)

    def close(self) -> None:
        self.state.close()

    # --- one clip (worker threads) --------------------------------------------------------------

    def clip(self, entry: Entry) -> ClipResult:
        res = ClipResult(entry)
        if not _SAFE_ID.fullmatch(entry.id):
            res.error = f"its id {entry.id!r} cannot name files"
            return res
        meta = self.source.metadata(entry)
        if meta is None:
            res.error = "its record is missing from the store"
            return res
        device = meta.get("device_id")
        res.device_id = device if isinstance(device, str) else "" if device is None else str(device)
        clip = meta.get("clip") or {}
        res.info = {k: clip.get(k) for k in ("start_at", "duration_s", "fps", "width", "height")}
        res.info["cid"] = meta.get("cid")
        try:
            start = epoch(clip["start_at"]) if clip.get("start_at") else None
        except ValueError:
            start = None
        res.start = start
        if start is not None:
            res.span_us = (round(start * 1e6), round((start + float(clip.get("duration_s") or 0)) * 1e6))
        if not entry.has_video:
            res.note = "no video"
            return res
        wanted = plan(meta, self.options.min_sharpness)
        res.labels, res.left_out = wanted.labels, wanted.left_out
        if not wanted.frames:
            res.note = "no frame with its codes known" + (" at that sharpness" if wanted.left_out else "")
            return res
        video = self.source.video(entry)
        if video is None:
            res.error = "its video is missing from the store"
            return res
        try:
            got = pictures(video, wanted, self.options.negatives)
        except FrameError as exc:
            res.error = str(exc)
            return res
        for pic in got.pictures:
            if not pic.background:  # files written here, in parallel; background pictures once the set takes them
                self.state.write_pending(entry.id, pic)
        res.pictures = got.pictures
        res.left_out.update(got.left_out)
        return res

    # --- the run (calling thread) -------------------------------------------------------------

    def run(self, device_id: str | None = None, since_us: int | None = None,
            progress: bool | None = None) -> ExportResult:
        from tqdm import tqdm

        started = time.perf_counter()
        res = ExportResult()
        done = self.state.done()
        disable = None if progress is None else not progress
        with ThreadPoolExecutor(self.options.workers) as pool, \
                tqdm(desc="export", unit=" clip", disable=disable) as bar:
            flight: deque[Future[ClipResult]] = deque()
            for entry in self.source.walk(device_id, since_us):
                res.listed += 1
                if entry.id in done:
                    res.done_before += 1
                    bar.update(1)
                    continue
                flight.append(pool.submit(self.clip, entry))
                while len(flight) >= 2 * self.options.workers or (flight and flight[0].done()):
                    self._record(flight.popleft().result(), res)
                    bar.update(1)
            while flight:
                self._record(flight.popleft().result(), res)
                bar.update(1)
        res.per_split, res.bridged = self.state.assign_splits(self.options.split_by, self.options.val,
                                                              self.options.test)
        self.state.write_index(self.options.license)
        res.ratio, res.asked, res.sides = self.state.counts(), self.options.negatives, self.state.splits()
        res.seconds = time.perf_counter() - started
        return res

    def _record(self, got: ClipResult, res: ExportResult) -> None:
        if got.error is not None:
            res.failed += 1
            log.error("export: clip=%s not exported: %s (the next run tries it again)", got.entry.id, got.error)
            return
        added, background, boxes, identical = self.state.record(got.entry.id, got.device_id, got.span_us, got.start,
                                                                got.info, got.labels, got.pictures, got.note)
        res.images += added
        res.background += background
        res.boxes += boxes
        res.identical += identical
        res.left_out.update(got.left_out)
        if got.pictures:
            res.exported += 1
        else:
            res.nothing += 1
            log.debug("export: nothing from clip=%s (%s)", got.entry.id, got.note)


def since_us(text: str | None) -> int | None:
    """`--since` (RFC 3339, or a date: midnight UTC) as microseconds; ValueError when not a time."""
    if not text:
        return None
    try:
        return parse_time_us(text if "T" in text else text + "T00:00:00+00:00")
    except ValueError:
        raise ValueError(f"--since {text!r}: not a time such as 2026-11-24 or 2026-11-24T08:00:00Z") from None


def summary(res: ExportResult, out: str, fmt: str) -> str:
    left = ", ".join(f"{n} {why}" for why, n in sorted(res.left_out.items())) or "none"
    splits = ", ".join(f"{res.per_split[s]} {s}" for s in ("train", "val", "test") if res.per_split[s])
    lines = [f"exported {res.exported} clips ({res.images} images: {res.images - res.background} with codes, "
             f"{res.background} without; {res.boxes} boxes; {splits or 'none new'}) to {out} as {fmt} in "
             f"{res.seconds:.1f} s: {res.listed} listed, {res.done_before} done before, {res.nothing} with nothing "
             f"to export, {res.failed} failed",
             f"frames left out: {left}; {res.identical} identical to an image already exported",
             f"background pictures in the set: {res.ratio[0]} for {res.ratio[1]} with codes (asked: {res.asked:g} per "
             "picture with codes)"]
    if "val" not in res.sides:
        lines.append("no clip of the set drew val: data.yaml validates on train; add clips or raise --val")
    if res.bridged:
        lines.append(f"{res.bridged} new clips overlap clips already on two sides of the split: they took the earlier "
                     "clip's side")
    return "\n".join(lines)


def _no_input(args: Any, storage_spec: str | None) -> str | None:
    """Why there is nothing to read (a missing or empty LDO index, clips only in the /cid store), or None."""
    data_dir = Path(args.data_dir)
    if args.index is None and not (data_dir / "ldo-index.sqlite3").exists():
        at_cid = cid_clips(data_dir)
        cid_hint = (f"; {at_cid} clips that POST /cid kept (data ingestion off, GET /cid/list) are in "
                    f"{data_dir / DB_FILE}: export them with --source cid") if at_cid else ""
        return (f"no LDO index at {data_dir / 'ldo-index.sqlite3'}: give the receiver's --data-dir or --index, or "
                f"build one from the store with: edge-agent receiver reindex --data-dir {data_dir}"
                + (f" --storage {storage_spec}" if storage_spec else "") + cid_hint)
    return None


def _empty_index(storage: LdoStorage, data_dir: Path, storage_spec: str | None) -> str | None:
    """Why an empty index is not the truth (the store holds LDOs, or /cid kept the clips), or None."""
    if not storage.index.is_empty():
        return None
    if any(key.endswith(".json") and not key.startswith("_keys/") for key, _ in islice(storage.objects.list(""), 1000)):
        return (f"the LDO index {storage.index.description} is empty but {storage.objects.describe()} holds LDOs: "
                f"build it with: edge-agent receiver reindex --data-dir {data_dir}"
                + (f" --storage {storage_spec}" if storage_spec else ""))
    if at_cid := cid_clips(data_dir):
        return (f"the LDO index {storage.index.description} is empty, and {at_cid} clips that POST /cid kept (data "
                f"ingestion off, GET /cid/list) are in {data_dir / DB_FILE}: export them with --source cid")
    return None


def export_args(args: Any) -> int:
    """`edge-agent receiver export`: exit 0 done, 1 clips failed (named in the log), 64 usage, 66 nothing to
    read there (no LDO index), 69 store or index unreachable, 78 bad store spec."""
    name = "edge-agent receiver export"
    if not args.out or not args.format:
        print(f"{name}: --format coco|yolo and --out DIR are required", file=sys.stderr)
        return 64
    try:
        since = since_us(args.since)
    except ValueError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 64
    options = Options(args.format, args.min_sharpness, args.negatives, args.split_by, args.val, args.test,
                      args.license, max(1, args.workers))
    source: Source
    if args.source == "cid":
        if not (Path(args.data_dir) / DB_FILE).is_file():
            print(f"{name}: no /cid store at {Path(args.data_dir) / DB_FILE}: give the receiver's "
                  "--data-dir", file=sys.stderr)
            return 66
        source = CidSource(Path(args.data_dir))
    else:
        if why := _no_input(args, args.storage):
            print(f"{name}: {why}", file=sys.stderr)
            return 66
        try:
            storage = make_storage(args.storage, Path(args.data_dir), args.s3_endpoint, args.site, args.index)
        except ValueError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            return 78
        source = LdoSource(storage)
        try:
            why = _empty_index(storage, Path(args.data_dir), args.storage)
        except StorageUnavailable as exc:
            source.close()
            print(f"{name}: {exc} (is the store reachable?)", file=sys.stderr)
            return 69
        if why:
            source.close()
            print(f"{name}: {why}", file=sys.stderr)
            return 66
    try:
        exporter = Exporter(source, Path(args.out), options)
    except ExportError as exc:
        source.close()
        print(f"{name}: {exc}", file=sys.stderr)
        return 64
    try:
        res = exporter.run(device_id=args.device_id, since_us=since, progress=sys.stderr.isatty())
    except StorageUnavailable as exc:
        print(f"{name}: {exc} (is the store reachable? run it again to resume)", file=sys.stderr)
        return 69
    finally:
        exporter.close()
        source.close()
    print(summary(res, args.out, args.format))
    if res.failed:
        print(f"{name}: {res.failed} clips could not be exported (each named above with its cause)", file=sys.stderr)
        return 1
    return 0
