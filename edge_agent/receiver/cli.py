"""`edge-agent receiver` and `python -m edge_agent.receiver`: run the reference edge server."""

from __future__ import annotations

import argparse
import errno
import importlib.util
import logging
import socket
import sqlite3
import sys
from pathlib import Path

from edge_agent import const

# sysexits beside const's: a port below 1024 without the right to bind it, a port or host not to be had
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE
EXIT_NOPERM = 77  # EX_NOPERM


def _port(text: str) -> int:
    """A TCP port number, refused as a usage error (not a traceback from bind) when out of range."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0-65535)")
    return port


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", choices=("serve", "reindex", "export"), default="serve",
                   help="serve (default); reindex: add every LDO in --storage missing from --index, then exit; "
                   "export: write the LDOs as a training set (--format, --out)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8000, help="port (default 8000)")
    p.add_argument("--data-dir", default="receiver-data", help="where videos and the database go "
                   "(default receiver-data)")
    p.add_argument("--max-bytes", type=int, default=200 << 20, help="largest request body accepted, larger ones "
                   "get 413 (default 209715200, 200 MiB)")
    p.add_argument("--header-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="close connections that send no complete request header within this time (default 10)")
    p.add_argument("--body-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="a request body gets this long, plus 1 s per --min-body-rate bytes received, or the "
                   "request gets 408 and its connection is closed (default 10)")
    p.add_argument("--min-body-rate", type=float, default=25_000, metavar="BYTES_PER_S",
                   help="the slowest body accepted once --body-timeout is spent: keep it at or below the "
                   "agents' upload.min_rate_bytes_per_s (default 25000)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="(default INFO)")
    p.add_argument("--storage", metavar="file:DIR|s3://BUCKET/PREFIX",
                   help="where data-ingestion keeps LDOs (default: file: the data dir)")
    p.add_argument("--s3-endpoint", metavar="URL", help="S3-compatible endpoint (MinIO, SeaweedFS); default AWS")
    p.add_argument("--site", default=None, help="site name in object keys (default $SITE or 'default')")
    p.add_argument("--index", metavar="postgresql://...|sqlite:PATH",
                   help="the LDO index behind GET /ingest/list: PostgreSQL, shared by several receivers on one "
                   "store (extra postgres), or SQLite (default: ldo-index.sqlite3 in the data dir)")
    p.add_argument("--fresh", action="store_true", help="with reindex: empty the index first (stop receivers first)")
    e = p.add_argument_group("export", "frames (JPEG) with every QR code the agent saw boxed, from each clip's "
                             "track; train/val/test by clip; resumable")
    e.add_argument("--format", choices=("coco", "yolo"), help="COCO JSON, or YOLO txt files with a data.yaml")
    e.add_argument("--out", metavar="DIR", help="where the training set goes (run again to add what is new)")
    e.add_argument("--source", choices=("ldo", "cid"), default="ldo",
                   help="ldo (default): data-ingestion's LDOs (--storage, --index); cid: the clips POST /cid kept in "
                   "--data-dir (a receiver with data ingestion off)")
    e.add_argument("--since", metavar="TIME", help="clips received at or after this time (2026-11-24 or RFC 3339)")
    e.add_argument("--device-id", help="only this device's clips (its id as the device sends it)")
    e.add_argument("--min-sharpness", type=float, metavar="VAR",
                   help="only frames whose every code read is at least this sharp (variance of the Laplacian); "
                   "frames without the figure (older agents' clips without a track, frames of refused or unread "
                   "codes only) are left out")
    e.add_argument("--negatives", type=float, default=0.1, metavar="RATIO",
                   help="pictures without a code per picture with codes, from frames the agent analysed and found "
                   "empty (default 0.1)")
    e.add_argument("--split-by", choices=("clip", "device-hour", "device-day"), default="clip",
                   help="what stays on one side of the split: a clip (default), or a device's hour or day; clips "
                   "of one device that overlap in time always share their side")
    e.add_argument("--val", type=float, default=0.2, metavar="FRACTION", help="share of groups for val (default 0.2)")
    e.add_argument("--test", type=float, default=0.0, metavar="FRACTION", help="share of groups for test (default 0)")
    e.add_argument("--license", default="proprietary", metavar="NAME",
                   help="the license named in COCO's licenses (default proprietary)")
    e.add_argument("--workers", type=int, default=4, help="clips decoded at once (default 4)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("receiver", help="run the reference edge server (POST /cid, /ingest/ldo, GET /ingest/list)",
                       description="The reference edge server for tests and integrators. USE_DATA_INGESTION=true "
                       "makes /cid forward each clip to DATA_INGESTION_URL/ingest/ldo.")
    add_arguments(p)
    # checked without importing FastAPI: every other command should start fast on a Pi
    p.set_defaults(func=serve_args if importlib.util.find_spec("fastapi") and importlib.util.find_spec("uvicorn")
                   else _missing)


def _missing(_args: argparse.Namespace) -> int:
    print("edge-agent receiver needs FastAPI and uvicorn: pip install 'cid-edge-agent[receiver]'", file=sys.stderr)
    return 69  # EX_UNAVAILABLE


def serve_args(args: argparse.Namespace) -> int:
    import uvicorn

    from ..logs import setup_logging
    from .app import create_app
    from .limits import header_timeout_protocol
    from .lock import DataDirInUse

    for flag, value in (("--header-timeout", args.header_timeout), ("--body-timeout", args.body_timeout),
                        ("--min-body-rate", args.min_body_rate)):
        if value <= 0:
            print(f"edge-agent receiver: {flag} must be > 0", file=sys.stderr)
            return 64
    setup_logging(args.log_level)
    if args.action == "reindex":
        return reindex(args)
    if args.action == "export":
        from .export import export_args

        return export_args(args)
    try:
        app = create_app(Path(args.data_dir), max_bytes=args.max_bytes, storage=args.storage,
                         s3_endpoint=args.s3_endpoint, site=args.site, index=args.index,
                         body_timeout_s=args.body_timeout, min_body_rate=args.min_body_rate)
    except ValueError as exc:
        print(f"edge-agent receiver: {exc}", file=sys.stderr)
        return 78
    except DataDirInUse as exc:
        print(f"edge-agent receiver: {exc}", file=sys.stderr)
        return 75  # EX_TEMPFAIL: as for a spool another process owns
    except (OSError, sqlite3.Error) as exc:
        why = _data_dir_problem(Path(args.data_dir), exc)
        print(f"edge-agent receiver: cannot use --data-dir {args.data_dir}: {why} (give --data-dir a folder this "
              "user can write, on a writable disk)", file=sys.stderr)
        return const.EXIT_CANTCREAT
    try:  # bound here, so a port in use is one line and an exit code, not uvicorn's lines and its 3
        sock = _listen(args.host, args.port)
    except OSError as exc:
        print(f"edge-agent receiver: cannot listen on {args.host}:{args.port}: {_listen_problem(exc)}",
              file=sys.stderr)
        return (const.EXIT_QUEUED if exc.errno == errno.EADDRINUSE
                else EXIT_NOPERM if exc.errno == errno.EACCES else EXIT_UNAVAILABLE)
    log = logging.getLogger(__name__)
    # bound already: a client connecting now waits in the listen queue until the server takes it
    log.info("receiver listening host=%s port=%d data_dir=%s", args.host, sock.getsockname()[1], args.data_dir)
    if app.state.use_ingestion:
        log.info("data ingestion on: POST /cid forwards each clip to %s/ingest/ldo, listed by GET /ingest/list",
                 app.state.ingestion_url)
    else:
        log.info("data ingestion off: POST /cid keeps clips in %s only and GET /ingest/list stays empty (it lists "
                 "what POST /ingest/ldo receives); set USE_DATA_INGESTION=true and DATA_INGESTION_URL to forward "
                 "clips there", args.data_dir)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level.lower(), access_log=False,
                            http=header_timeout_protocol(args.header_timeout))
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, as uvicorn would make it (address reuse, IPv6 for a ':' host)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host.strip("[]"), port), family=family, backlog=2048)
    sock.set_inheritable(True)
    return sock


def _listen_problem(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "address already in use (another receiver?): stop the program that has it, or choose another --port"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE): choose a --port above 1023"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "not an address of this machine: choose another --host (0.0.0.0 for all of them)"
    if isinstance(exc, socket.gaierror):
        return f"the host name does not resolve ({exc.strerror}): check --host"
    return exc.strerror or str(exc)


def _data_dir_problem(data_dir: Path, exc: OSError | sqlite3.Error) -> str:
    """What is wrong with the data dir, in words: a file where the folder should be, a read-only disk..."""
    blocker = next((p for p in (data_dir, *data_dir.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        return f"{blocker} is a file, not a folder" if blocker == data_dir else f"{blocker} is a file"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def reindex(args: argparse.Namespace) -> int:
    """Rebuild the index from the store, with a progress bar on a terminal."""
    from .storage import StorageUnavailable, make_storage

    try:
        storage = make_storage(args.storage, Path(args.data_dir), args.s3_endpoint, args.site, args.index)
    except ValueError as exc:
        print(f"edge-agent receiver reindex: {exc}", file=sys.stderr)
        return 78
    try:
        if args.fresh:
            storage.index.clear()
        found, added, secs = storage.reindex(progress=sys.stderr.isatty())
    except StorageUnavailable as exc:
        print(f"edge-agent receiver reindex: {exc} (is the store reachable?)", file=sys.stderr)
        return 69
    finally:
        storage.index.close()
    print(f"reindexed {found} LDOs from {storage.objects.describe()} into {storage.index.description}: "
          f"{added} added, {secs:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge_agent.receiver", description=__doc__)
    add_arguments(p)
    return serve_args(p.parse_args(argv))
