"""The receiver's HTTP API (the integration guide's /cid, /ingest/ldo and /ingest/list), a FastAPI app.

Stores or refuses, never half of either: a 2xx means the request's body arrived whole (the multipart
closing boundary seen, body.py), its video is the one metadata.clip describes (size and sha256, when
the metadata gives them), and the video and its record are on disk (store.py) or in the object store
(storage.py). The reply echoes the stored video's sha256 (contract.RECEIPT_SHA256), so a sender can
check it before deleting its copy. Anything else is a 4xx naming what is wrong and a `reason` a sender
acts on (400 incomplete_body, 422 video_mismatch, 408 body_too_slow: limits.py), or a 503 with
Retry-After when storing failed; in every case nothing of the request is left stored.

`POST /cid` forwards the clip to the data-ingestion service's `POST /ingest/ldo` when
USE_DATA_INGESTION is true, after storing it itself and before recording it: if that service is down
or refuses, or its receipt names other bytes, the edge gets 503 with Retry-After and retries later, so
nothing is lost and nothing is recorded twice (the idempotency key travels along).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    from fastapi import FastAPI, Query, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import ClientDisconnect
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("the reference receiver needs FastAPI: pip install 'cid-edge-agent[receiver]'") from exc

import requests

from .. import const
from ..delivery import contract
from ..delivery.cid import escape_payload
from .body import BodyRefused, ReceivedForm, read_form
from .limits import DEFAULT_BODY_TIMEOUT_S, DEFAULT_MIN_BODY_RATE, BodyLimit, key_error
from .metadata import parse_metadata, video_mismatch
from .storage import StorageUnavailable, make_storage, parse_time_us
from .store import Store

log = logging.getLogger("edge_agent.receiver")

DEFAULT_MAX_BYTES = 200 << 20
RETRY_AFTER_S = 5
_CID = re.compile(const.CID_PATTERN)


def _error(status: int, detail: str, headers: dict[str, str] | None = None, reason: str | None = None) -> JSONResponse:
    body = {"detail": detail, **({contract.FIELD_REASON: reason} if reason else {})}
    return JSONResponse(body, status_code=status, headers=headers)


def _retry_later(detail: str) -> JSONResponse:
    return _error(503, detail, {contract.HEADER_RETRY_AFTER: str(RETRY_AFTER_S)})


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


async def _take(request: Request, store: Store, what: str,
                keep: Callable[[ReceivedForm, str | None], JSONResponse]) -> Response:
    """Read the request's form whole, then `keep` it (its checks and its store) on a worker thread; or
    the reply that refuses it. Either way no part file of it is left."""
    key = request.headers.get(contract.HEADER_IDEMPOTENCY_KEY)  # printable: h11 checks header values
    if err := key_error(key):
        return _error(400, err)
    try:
        form = await read_form(request, store.incoming)
    except BodyRefused as exc:
        log.warning("refused %s clip=%s: %s", what, key or "-", exc.detail)
        return _error(exc.status, exc.detail, reason=exc.reason)
    except ClientDisconnect:
        log.warning("client went away mid-body on %s clip=%s: nothing stored", what, key or "-")
        return Response(status_code=400)  # nobody is left to read it
    except OSError as exc:
        log.error("could not write the body of %s clip=%s error=%s: answered 503, nothing kept", what, key or "-", exc)
        return _retry_later(f"could not store the request body ({exc.strerror or exc}), retry later")
    try:
        return await run_in_threadpool(keep, form, key)
    finally:
        form.discard()


def create_app(data_dir: Path, max_bytes: int = DEFAULT_MAX_BYTES, use_ingestion: bool | None = None,
               ingestion_url: str | None = None, storage: str | None = None, s3_endpoint: str | None = None,
               site: str | None = None, index: str | None = None, body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
               min_body_rate: float = DEFAULT_MIN_BODY_RATE) -> Any:
    store = Store(Path(data_dir))
    ldo_storage = make_storage(storage, Path(data_dir), s3_endpoint, site, index)
    try:
        ldo_storage.prepare()
    except StorageUnavailable as exc:
        log.error("could not check the LDO index against the store at start-up (will retry on restart): %s", exc)
    if use_ingestion is None:
        use_ingestion = _env_flag("USE_DATA_INGESTION")
    ingestion_url = (ingestion_url or os.environ.get("DATA_INGESTION_URL") or "").rstrip("/") or None
    if use_ingestion and not ingestion_url:
        raise ValueError("USE_DATA_INGESTION is true but DATA_INGESTION_URL is not set")
    app = FastAPI(title="edge-agent reference receiver", version="1")
    app.add_middleware(BodyLimit, max_bytes=max_bytes, body_timeout_s=body_timeout_s, min_body_rate=min_body_rate)
    app.state.store = store
    app.state.use_ingestion, app.state.ingestion_url = use_ingestion, ingestion_url  # for the start-up log
    session = requests.Session()

    def _parse_metadata(metadata: str | None) -> dict[str, Any] | JSONResponse | None:
        try:
            return parse_metadata(metadata)
        except ValueError as exc:
            return _error(422, str(exc))

    def _checked(form: ReceivedForm, what: str, key: str | None) -> dict[str, Any] | JSONResponse | None:
        """The form's metadata, parsed and matched against its video, or the 422 refusing it."""
        meta = _parse_metadata(form.fields.get(contract.FIELD_METADATA))
        if isinstance(meta, JSONResponse):
            return meta
        video = form.video
        problem = video_mismatch(meta, video.size if video else None, video.sha256 if video else None)
        if problem is not None:
            log.warning("refused %s clip=%s: %s", what, key or "-", problem)
            return _error(422, f"{problem}: the video is not the one the metadata describes; nothing was stored",
                          reason=contract.REASON_VIDEO_MISMATCH)
        return meta

    def _forward(key: str | None, meta: dict[str, Any] | None, video_path: Path | None, sha: str | None) -> str:
        """Send to data-ingestion; return its LDO id. Raises on failure (the edge will retry), and when
        its receipt names other bytes than ours."""
        files: dict[str, Any] = {contract.FIELD_METADATA: (None, json.dumps(meta or {}), "application/json")}
        headers = {contract.HEADER_IDEMPOTENCY_KEY: key} if key else {}
        fh = video_path.open("rb") if video_path else None
        try:
            if fh is not None:
                files[contract.FIELD_VIDEO] = (video_path.name, fh, contract.VIDEO_CONTENT_TYPE)
            resp = session.post(f"{ingestion_url}{contract.INGEST_LDO_PATH}", files=files, headers=headers,
                                timeout=(5, 60))
        finally:
            if fh is not None:
                fh.close()
        if resp.status_code not in (200, 201):
            raise RuntimeError(f"data-ingestion answered {resp.status_code}: {resp.text[:200]}")
        reply = resp.json()
        if contract.RECEIPT_SHA256 in reply and reply[contract.RECEIPT_SHA256] != sha:
            raise RuntimeError(f"data-ingestion stored sha256 {reply[contract.RECEIPT_SHA256]}, this clip is {sha}")
        return str(reply["id"])

    def _replay(key: str | None, cid: str, prior: tuple[int, dict[str, Any]]) -> JSONResponse:
        """The reply a key got before, for a retry of the same clip. A key already used for another
        CID is a client error, 422 naming both, and nothing is stored: not 409, which the agent (as
        the architecture's wire contract says) takes for "already delivered" and would drop a clip
        that never arrived; a 422 quarantines it, kept and listed, for someone to look at."""
        assert key is not None
        earlier = prior[1].get("cid")
        if earlier is not None and earlier != cid:
            log.warning("refused cid=%s clip=%s: the key was used for cid=%s", cid, key, earlier)
            return _error(422, f"Idempotency-Key {key!r} was used for cid {earlier!r}, this request has cid {cid!r}: "
                               "each clip needs its own key (the agent uses the event id)")
        store.count_replay("cid", key)
        log.info("replay cid=%s clip=%s", cid, key)
        return JSONResponse(prior[1], status_code=prior[0], headers={"Idempotent-Replay": "true"})

    def _store_cid(form: ReceivedForm, idempotency_key: str | None) -> JSONResponse:
        """Everything after the body has arrived, on a worker thread: checks, then store, then reply."""
        cid = form.fields.get(contract.FIELD_CID)
        if not cid:
            return _error(400, "missing form field 'cid'")
        if not _CID.fullmatch(cid) or not cid.isprintable():
            log.warning("refused cid=%s: not a valid CID", escape_payload(cid))
            return _error(422, f"cid is not a valid CID (must match {const.CID_PATTERN})")
        meta = _checked(form, f"cid={cid}", idempotency_key)
        if isinstance(meta, JSONResponse):
            return meta
        if meta is not None and meta.get("cid") not in (None, cid):
            return _error(422, "metadata.cid differs from the cid field")
        key = idempotency_key or (str(meta.get("event_id")) if meta and meta.get("event_id") else None)
        video = form.video
        with store.key_lock("cid", key):
            prior = store.reply_for("cid", key)
            if prior is not None:
                return _replay(key, cid, prior)
            video_file = None
            try:
                if video is not None:
                    video_file = store.keep_video("videos", video.path)
                ldo_id = None
                if use_ingestion:
                    try:
                        ldo_id = _forward(key, meta, store.data_dir / video_file if video_file else None,
                                          video.sha256 if video else None)
                    except (requests.RequestException, RuntimeError, ValueError, KeyError) as exc:
                        log.error("data-ingestion unavailable cid=%s clip=%s error=%s", cid, key, exc)
                        if video_file:
                            store.forget_video(video_file)
                        return _retry_later("data-ingestion service unavailable, retry later")
                size, sha = (video.size, video.sha256) if video else (0, None)
                sha_ok = None if sha is None or not ((meta or {}).get("clip") or {}).get("sha256") else True
                event_row = {
                    "id": uuid.uuid4().hex, "cid": cid, "event_id": (meta or {}).get("event_id"),
                    "idempotency_key": key, "metadata": json.dumps(meta) if meta is not None else None,
                    "video_file": video_file, "size_bytes": size, "sha256": sha,
                    "sha256_ok": None if sha_ok is None else int(sha_ok), "ldo_id": ldo_id,
                    "received_at": time.time(),
                }
                body = {"id": event_row["id"], "cid": cid, "event_id": event_row["event_id"], "size_bytes": size,
                        contract.RECEIPT_SHA256: sha, "sha256_ok": sha_ok, "ldo_id": ldo_id}
                prior = store.add_event(event_row, 201, body)
            except (OSError, sqlite3.Error) as exc:
                log.error("could not store cid=%s clip=%s error=%s: answered 503, nothing kept", cid, key, exc)
                if video_file:
                    store.forget_video(video_file)
                return _retry_later(f"could not store the clip ({exc}), retry later")
            if prior is not None:  # recorded first by another request: keep no second copy of the video
                if video_file:
                    store.forget_video(video_file)
                return _replay(key, cid, prior)
        log.info("stored cid=%s clip=%s bytes=%d sha256_ok=%s ldo=%s", cid, key, size, sha_ok, ldo_id or "-")
        return JSONResponse(body, status_code=201)

    def _store_ldo(form: ReceivedForm, key: str | None) -> JSONResponse:
        meta = _checked(form, "ldo", key)
        if isinstance(meta, JSONResponse):
            return meta
        video = form.video
        try:
            with store.key_lock("ldo", key):
                prior = ldo_storage.replay(key, meta)
                if prior is not None:
                    return JSONResponse(prior, status_code=201, headers={"Idempotent-Replay": "true"})
                if video is None:
                    body = ldo_storage.ingest(key, meta, None, None)
                else:
                    with video.path.open("rb") as src:
                        body = ldo_storage.ingest(key, meta, src, video.filename, (video.size, video.sha256))
        except (StorageUnavailable, OSError, sqlite3.Error) as exc:
            log.error("ingest failed key=%s error=%s", key or "-", exc)
            return _retry_later("storage unavailable, retry later")
        log.info("ingested ldo=%s key=%s bytes=%d", body["id"], key or "-", body["size_bytes"])
        return JSONResponse(body, status_code=201)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "locked_keys": store.locked_keys()}

    @app.post(contract.CID_PATH, status_code=201)
    async def post_cid(request: Request) -> Response:
        return await _take(request, store, "cid", _store_cid)

    @app.post(contract.INGEST_LDO_PATH, status_code=201)
    async def ingest_ldo(request: Request) -> Response:
        return await _take(request, store, "ldo", _store_ldo)

    @app.get(contract.INGEST_LIST_PATH)
    def ingest_list(skip: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=1000),
                    device_id: str | None = Query(None, max_length=200), site: str | None = Query(None, max_length=200),
                    since: str | None = Query(None, description="RFC 3339, inclusive, on the ingest time"),
                    until: str | None = Query(None, description="RFC 3339, exclusive, on the ingest time")) -> Any:
        """Newest first (ingest time, then id, both descending), with the exact total of the filter."""
        bounds: dict[str, int | None] = {}
        for name, value in (("since", since), ("until", until)):
            try:
                bounds[name] = parse_time_us(value) if value else None
            except ValueError:
                return _error(422, f"{name}={value!r} is not an RFC 3339 time such as 2026-11-24T08:00:00Z")
        try:
            total, ldos = ldo_storage.list(skip, limit, device_id=device_id, site=site, since_us=bounds["since"],
                                           until_us=bounds["until"])
        except StorageUnavailable as exc:
            return _error(503, str(exc), {contract.HEADER_RETRY_AFTER: str(RETRY_AFTER_S)})
        return {"total": total, "ldos": ldos}

    @app.get(contract.CID_PATH + "/list")
    def cid_list(skip: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
        total, events = store.list_events(skip, limit)
        return {"total": total, "events": events}

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("receiver error: %s", exc)
        return _error(500, "internal error")

    return app
