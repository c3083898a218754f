"""`edge-agent receiver` and `python -m edge_agent.receiver`: run the reference edge server."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", choices=("serve", "reindex", "export"), default="serve",
                   help="serve (default); reindex: add every LDO in --storage missing from --index, then exit; "
                   "export: write the LDOs as a training set (--format, --out)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--data-dir", default="receiver-data", help="where videos and the database go "
                   "(default receiver-data)")
    p.add_argument("--max-bytes", type=int, default=200 << 20, help="largest request body accepted, larger ones "
                   "get 413 (default 209715200, 200 MiB)")
    p.add_argument("--header-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="close connections that send no complete request header within this time (default 10)")
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
    e = p.add_argument_group("export", "frames (JPEG) and QR-code boxes from every LDO's track, resumable")
    e.add_argument("--format", choices=("coco", "yolo"), help="COCO JSON, or YOLO txt files with a data.yaml")
    e.add_argument("--out", metavar="DIR", help="where the training set goes (run again to add what is new)")
    e.add_argument("--since", metavar="TIME", help="LDOs ingested at or after this time (2026-11-24 or RFC 3339)")
    e.add_argument("--device-id", help="only this device's LDOs")
    e.add_argument("--min-sharpness", type=float, metavar="VAR",
                   help="only boxes at least this sharp (variance of the Laplacian; clips without a track have "
                   "no such figure and are left out)")
    e.add_argument("--workers", type=int, default=4, help="LDOs decoded at once (default 4)")


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

    if args.header_timeout <= 0:
        print("edge-agent receiver: --header-timeout must be > 0 seconds", file=sys.stderr)
        return 64
    setup_logging(args.log_level)
    if args.action == "reindex":
        return reindex(args)
    if args.action == "export":
        from .export import export_args

        return export_args(args)
    try:
        app = create_app(Path(args.data_dir), max_bytes=args.max_bytes, storage=args.storage,
                         s3_endpoint=args.s3_endpoint, site=args.site, index=args.index)
    except ValueError as exc:
        print(f"edge-agent receiver: {exc}", file=sys.stderr)
        return 78
    except DataDirInUse as exc:
        print(f"edge-agent receiver: {exc}", file=sys.stderr)
        return 75  # EX_TEMPFAIL: as for a spool another process owns
    log = logging.getLogger(__name__)
    log.info("receiver listening host=%s port=%d data_dir=%s", args.host, args.port, args.data_dir)
    if app.state.use_ingestion:
        log.info("data ingestion on: POST /cid forwards each clip to %s/ingest/ldo, listed by GET /ingest/list",
                 app.state.ingestion_url)
    else:
        log.info("data ingestion off: POST /cid keeps clips in %s only and GET /ingest/list stays empty (it lists "
                 "what POST /ingest/ldo receives); set USE_DATA_INGESTION=true and DATA_INGESTION_URL to forward "
                 "clips there", args.data_dir)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower(), access_log=False,
                http=header_timeout_protocol(args.header_timeout))
    return 0


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
