"""Delivery of spooled clips to the edge server: `POST /cid`, oldest first, one at a time.

Reply classes (DESIGN.md section 5): 2xx delivered; 409 a duplicate of a delivered clip, also
delivered; 408, 429, 5xx, connection errors and timeouts retried with full-jitter backoff that
honours Retry-After; 401/403 retried too (a wrong token is the device's problem, not the clip's,
and fixing the token must not require requeueing a fleet's worth of clips); any other 4xx moves
the clip to quarantine with the reply logged. The request body is rebuilt from the files on every
attempt and the Idempotency-Key is the event id, fixed when the clip was made.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import requests

from . import contract
from .backoff import Backoff, parse_retry_after
from .cid import escape_payload
from .config import UploadConfig
from .credentials import CredentialError, load_token
from .metrics import Metrics
from .spool import Entry, Spool

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({401, 403, 408, 425, 429})

ResultCallback = Callable[[str, str, str], None]


class Uploader:
    def __init__(self, spool: Spool, cfg: UploadConfig, metrics: Metrics, version: str,
                 on_result: ResultCallback | None = None):
        self.spool = spool
        self.metrics = metrics
        self.version = version
        self.on_result = on_result
        self._session = requests.Session()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._retry_at: dict[str, float] = {}  # event id -> monotonic time of the next attempt
        self._lock = threading.Lock()
        self.update_config(cfg)

    def update_config(self, cfg: UploadConfig) -> None:
        """Live reload: the next attempt uses the new URL, token, TLS settings and backoff."""
        with self._lock:
            self.cfg = cfg
            self.backoff = Backoff(cfg.backoff_base_s, cfg.backoff_cap_s)
            self._token_error: str | None = None
            try:
                self._token = load_token(cfg)
            except CredentialError as exc:
                self._token, self._token_error = None, str(exc)
                log.error("upload token: %s", exc)
        self.wake()

    # --- thread ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="uploader", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = self._step()
            if wait is None:
                continue
            self._wake.wait(wait)
            self._wake.clear()

    def _step(self) -> float | None:
        """One scheduling decision: attempt the head now (return None) or say how long to sleep."""
        entry = self.spool.head()
        if entry is None or not self.cfg.url:
            return 5.0
        due = self._retry_at.get(entry.event_id, 0.0)
        now = time.monotonic()
        if now < due:
            return due - now
        try:
            self.attempt(entry)
        except Exception:  # never let one odd clip kill delivery
            log.exception("upload attempt failed unexpectedly clip=%s", entry.event_id)
            self._retry_at[entry.event_id] = time.monotonic() + self.backoff.delay(entry.attempts + 1)
        return None

    # --- one attempt ----------------------------------------------------------------------------

    def attempt(self, entry: Entry) -> str:
        """POST one clip; returns delivered, duplicate, retry or quarantined."""
        cfg = self.cfg
        if entry.video_path is not None:
            try:
                size = entry.video_path.stat().st_size
            except OSError:
                size = -1
            if size != entry.size_bytes:
                return self._finish(entry, "quarantined", "clip file missing or changed size since it was queued")
        headers = {
            contract.HEADER_IDEMPOTENCY_KEY: entry.event_id,
            contract.HEADER_USER_AGENT: contract.user_agent(self.version),
        }
        if self._token_error:
            return self._retry(entry, self._token_error, None)
        if self._token:
            headers[contract.HEADER_AUTHORIZATION] = f"Bearer {self._token}"
        verify: bool | str = (cfg.ca_file or True) if cfg.verify_tls else False
        cert = (cfg.cert_file, cfg.key_file) if cfg.cert_file and cfg.key_file else cfg.cert_file
        timeout = (cfg.connect_timeout_s, cfg.read_timeout_s + entry.size_bytes / cfg.min_rate_bytes_per_s)
        data = {contract.FIELD_CID: entry.cid, contract.FIELD_METADATA: json.dumps(entry.metadata)}
        started = time.monotonic()
        fh = None
        try:
            files: dict[str, Any] | None = None
            if entry.video_path is not None:
                fh = entry.video_path.open("rb")  # a fresh body for every attempt
                files = {contract.FIELD_VIDEO: (contract.video_filename(entry.event_id), fh,
                                                contract.VIDEO_CONTENT_TYPE)}
            resp = self._session.post(cfg.url, data=data, files=files, headers=headers, timeout=timeout,
                                      verify=verify, cert=cert)
        except requests.exceptions.SSLError as exc:
            return self._retry(entry, f"TLS error: {_short(exc)}", None)
        except requests.RequestException as exc:
            return self._retry(entry, f"{type(exc).__name__}: {_short(exc)}", None)
        except OSError as exc:
            return self._finish(entry, "quarantined", f"cannot read clip: {exc}")
        finally:
            if fh is not None:
                fh.close()
        self.metrics.set("edge_agent_upload_seconds", round(time.monotonic() - started, 3))
        status = resp.status_code
        if 200 <= status < 300:
            return self._finish(entry, "delivered", f"HTTP {status}")
        if status == 409:
            return self._finish(entry, "duplicate", "HTTP 409: already delivered")
        reply = escape_payload(resp.text or "", limit=200)
        if status in RETRY_STATUSES or status >= 500:
            retry_after = parse_retry_after(resp.headers.get(contract.HEADER_RETRY_AFTER))
            return self._retry(entry, f"HTTP {status} {reply}", retry_after)
        return self._finish(entry, "quarantined", f"HTTP {status} {reply}")

    def _retry(self, entry: Entry, error: str, retry_after: float | None) -> str:
        attempts = entry.attempts + 1
        delay = self.backoff.delay(attempts, retry_after)
        self._retry_at[entry.event_id] = time.monotonic() + delay
        self.spool.mark_failed(entry.event_id, error)
        self.metrics.inc("edge_agent_uploads_total", result="retry")
        log.warning("upload failed cid=%s clip=%s attempt=%d error=%s retry_in_s=%.1f", entry.cid, entry.event_id,
                    attempts, error, delay)
        self._notify(entry, "retry")
        return "retry"

    def _finish(self, entry: Entry, result: str, detail: str) -> str:
        self._retry_at.pop(entry.event_id, None)
        if result == "quarantined":
            self.spool.quarantine(entry.event_id, detail)
        else:
            self.spool.mark_delivered(entry.event_id)
            age = time.time() - entry.created_at
            log.info("delivered cid=%s clip=%s bytes=%d attempts=%d queued_s=%.1f%s", entry.cid, entry.event_id,
                     entry.size_bytes, entry.attempts + 1, age, " (duplicate)" if result == "duplicate" else "")
        self.metrics.inc("edge_agent_uploads_total", result=result)
        self._notify(entry, result)
        return result

    def _notify(self, entry: Entry, result: str) -> None:
        if self.on_result is not None:
            try:
                self.on_result(entry.event_id, entry.cid, result)
            except Exception:
                log.exception("upload result callback failed")

    # --- draining -------------------------------------------------------------------------------

    def drain(self, timeout_s: float) -> bool:
        """Deliver until the spool is empty or the time is up; True when empty. Works with or without
        the worker thread (used by replay and `spool flush`)."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.spool.head() is None:
                return True
            left = deadline - time.monotonic()
            if left <= 0 or not self.cfg.url:
                return False
            if self._thread is not None:
                self.wake()
                time.sleep(min(0.05, left))
                continue
            wait = self._step()
            if wait is not None:
                if self.spool.head() is None:
                    return True
                time.sleep(min(wait, max(0.0, deadline - time.monotonic())))


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:200] + "..."
