"""Delivery of spooled clips to the edge server: `POST /cid`, oldest first, one at a time.

What a reply means is one table, replies.py (docs/architecture.md section 6): 2xx delivered; 409 a
duplicate of a delivered clip, also delivered; 408, 425, 429, 5xx, a 400 whose reason is
`incomplete_body`, connection errors and timeouts retried with full-jitter backoff that honours
Retry-After; a 422 whose reason is `video_mismatch` re-hashes the clip file (intact: sent again;
damaged: the CID goes out without it, as for any damaged video); any other 4xx moves the clip to
quarantine with the reply logged. 401/403 are retried too (a wrong or expired token is the device's
problem, not the clip's, and fixing it must not require requeueing a fleet's worth of clips; the
token file is re-read on each), and so are 3xx (redirects are not followed: a POST body cannot be
replayed safely across one, and a moved endpoint is a config fix, logged with its Location).

A 2xx whose JSON carries the receipt (contract.RECEIPT_SHA256) deletes the clip only when it names the
sha256 that was sent: a server that stored other bytes, or none, must not make the agent drop the only
good copy. That attempt counts as failed and the clip is sent again.

The Idempotency-Key is the event id, fixed when the clip was made. The request itself (the body
streamed from the clip file, hashed on the way out, and the deadlines that cut a trickling link or
a stop) is in request.py.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urljoin

import requests
import urllib3

from edge_agent import clock_sync
from edge_agent.config import Config, UploadConfig
from edge_agent.config.live import PendingConfig
from edge_agent.delivery import contract
from edge_agent.delivery.backoff import Backoff, parse_retry_after
from edge_agent.delivery.cid import escape_payload
from edge_agent.delivery.credentials import CredentialError, load_token, tls_options
from edge_agent.delivery.errors import describe_error, describe_reply
from edge_agent.delivery.outcome import UploadResult
from edge_agent.delivery.replies import Verdict, classify, reason_of, receipt_problem, reply_json
from edge_agent.delivery.request import BodyAborted, DeadlineCutter, MultipartBody, UploadAdapter, send_limits
from edge_agent.delivery.spool import Entry, Spool
from edge_agent.delivery.spool_files import sha256_file
from edge_agent.metrics import Metrics
from edge_agent.thread_names import name_os_thread

log = logging.getLogger(__name__)
# urllib3 logs a reply whose headers were cut short with a full traceback at WARNING; the attempt's own
# one-line result (timed out, retried) says it for a technician
logging.getLogger("urllib3.connection").setLevel(logging.ERROR)

# With no upload.url the worker re-checks the queue this often (a `spool requeue` from another process
# adds clips without waking it).
IDLE_POLL_S = 5.0
# After an unexpected error (e.g. the spool's disk is full), pause before looking again rather than spin.
ERROR_PAUSE_S = 1.0
# How much of a server's reply goes into a log line and the clip's last_error.
REPLY_LOG_CHARS = 200

# (event id, CID, result)
ResultCallback = Callable[[str, str, UploadResult], None]


@dataclass(frozen=True)
class UploaderStatus:
    videos_lost: int  # queued clips whose video this uploader found gone or damaged (sent CID-only), since made


class Uploader:
    """One worker thread delivering the spool's clips in order. Also usable without the thread
    (`deliver_once`, `drain`) by `spool flush` and replay."""

    def __init__(self, spool: Spool, cfg: UploadConfig, metrics: Metrics, version: str,
                 on_result: ResultCallback | None = None):
        self.spool = spool
        self.metrics = metrics
        self.version = version
        self.on_result = on_result
        self._session = requests.Session()
        adapter = UploadAdapter()
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()  # the worker's last pass found nothing due; it waits
        self._thread: threading.Thread | None = None
        self._attempt_lock = threading.Lock()
        self._cutter: DeadlineCutter | None = None  # one request at a time, whoever asks
        self._videos_lost = 0  # counted where attempts are made, one at a time
        self._token: str | None = None
        self._token_error: str | None = None
        # the settings attempts are made with, written only where attempts are made (`deliver_once`, under
        # the attempt lock): a reload is offered to `_pending` and taken before the next attempt
        self.config = Config().model_copy(update={"upload": cfg})
        self._pending = PendingConfig()
        self._use(cfg)

    @property
    def cfg(self) -> UploadConfig:
        return self.config.upload

    def apply(self, new: Config, changed: frozenset[str]) -> None:
        """Live part (any thread): the next attempt uses the new URL, token, TLS settings and backoff."""
        self._pending.offer(new, changed)
        self.wake()

    def _take_config(self) -> None:
        """Where attempts are made: the reloaded settings, if a reload offered them."""
        taken = self._pending.take()
        if taken is not None:
            self.config = taken[0]
            self._use(self.cfg)

    def _use(self, cfg: UploadConfig) -> None:
        self.backoff = Backoff(cfg.backoff_base_s, cfg.backoff_cap_s)
        self._load_token()
        if cfg.url and cfg.url.startswith("https:") and not cfg.verify_tls:
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # one line below, not one per clip
            log.warning("upload.verify_tls is false: the server's certificate is not checked url=%s", cfg.url)
        if bool(cfg.key_file) and not cfg.cert_file:
            log.warning("upload.key_file is set without upload.cert_file: no client certificate is sent")

    def _load_token(self) -> None:
        try:
            self._token, self._token_error = load_token(self.cfg), None
        except CredentialError as exc:
            self._token, self._token_error = None, str(exc)
            log.error("upload token: %s", exc)

    def status(self) -> UploaderStatus:
        """What this uploader did, for a caller's summary (`spool flush`)."""
        return UploaderStatus(self._videos_lost)

    # --- thread ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="uploader", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker; an upload in progress is cut at its next block (the clip stays queued)."""
        self._stop.set()
        self._wake.set()
        cutter = self._cutter
        if cutter is not None:
            cutter.cut("stop")  # a server that holds the reply must not hold the shutdown
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("uploader still waiting for a reply after stop; the clip stays queued")
            self._thread = None

    def wake(self) -> None:
        """Look at the queue now (a new clip, a new config). A clip backing off stays backing off."""
        self._wake.set()

    def wait_idle(self, timeout: float) -> bool:
        """True once the worker has found nothing due and waits (for a wake, the head clip's retry
        time or the poll): every clip it could send has had its attempt. As of the worker's last
        pass: a clip queued since then counts only after the next one (`wake` asks for it)."""
        return self._idle.wait(timeout)

    def _run(self) -> None:
        name_os_thread("uploader")
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.spool.serve_requests()
                if self.deliver_once():
                    continue
                wait = self._idle_s()
                self._idle.set()
            except (sqlite3.Error, OSError) as exc:  # a full or failing disk: one line, and again after a pause
                log.error("uploader: the spool cannot be read or written now: %s (tried again in %gs)",
                          getattr(exc, "strerror", None) or exc, ERROR_PAUSE_S)
                wait = ERROR_PAUSE_S
            except Exception:  # never let one odd clip or a closed spool kill delivery
                log.exception("uploader: unexpected error")
                wait = ERROR_PAUSE_S
            self._wake.wait(wait)
            self._idle.clear()

    def _idle_s(self) -> float:
        """How long nothing can be done: until the head's retry time, or a poll interval."""
        if not self.cfg.url:
            return IDLE_POLL_S
        head = self.spool.head()
        if head is None:
            return IDLE_POLL_S
        return min(IDLE_POLL_S, max(0.0, head.retry_at - time.monotonic()))

    # --- attempts -------------------------------------------------------------------------------

    def deliver_once(self, deadline_mono: float | None = None) -> bool:
        """One attempt on the oldest clip if it is due; False when nothing was due (or no upload.url).
        The attempt ends by `deadline_mono` at the latest."""
        with self._attempt_lock:
            self._take_config()
            if not self.cfg.url or self._stop.is_set():
                return False
            entry = self.spool.next_due(time.monotonic())
            if entry is None:
                return False
            try:
                self.attempt(entry, deadline_mono)
            except (sqlite3.Error, OSError) as exc:  # the spool's disk, not the clip: retried, its one line says so
                self._retry(entry, f"the spool's disk: {getattr(exc, 'strerror', None) or exc}", None)
            except Exception as exc:
                log.exception("upload attempt failed unexpectedly cid=%s clip=%s", entry.cid, entry.event_id)
                self._retry(entry, f"internal error: {type(exc).__name__}", None)
            return True

    def attempt(self, entry: Entry, deadline_mono: float | None = None) -> UploadResult:
        """POST one clip; returns delivered, duplicate, retry, quarantined (or stopped: not counted).

        The whole request (connect, send, the complete answer) ends by connect_timeout_s +
        read_timeout_s + size / min_rate_bytes_per_s, or by `deadline_mono` if that comes first
        (`spool flush --timeout`); a request cut by the caller's deadline leaves the clip due as it was."""
        cfg = self.cfg
        assert cfg.url
        if entry.video_path is not None:
            problem = _video_problem(entry)
            if problem is not None:
                entry = self._without_video(entry, problem)
                if entry is None:
                    return UploadResult.QUARANTINED
        if self._token_error:
            self._load_token()  # the file may have been fixed since
            if self._token_error:
                return self._retry(entry, self._token_error, None)
        headers = {
            contract.HEADER_IDEMPOTENCY_KEY: entry.event_id,
            contract.HEADER_USER_AGENT: contract.user_agent(self.version),
        }
        if self._token:
            headers[contract.HEADER_AUTHORIZATION] = f"Bearer {self._token}"
        try:
            verify, cert = tls_options(cfg)
        except CredentialError as exc:  # a client key others can read: held until it is private
            return self._retry(entry, str(exc), None)
        budget_s = cfg.read_timeout_s + entry.size_bytes / cfg.min_rate_bytes_per_s
        started = time.monotonic()
        own_deadline = started + cfg.connect_timeout_s + budget_s
        deadline = own_deadline if deadline_mono is None else min(own_deadline, deadline_mono)
        try:
            body = MultipartBody(
                [(contract.FIELD_CID, entry.cid), (contract.FIELD_METADATA, json.dumps(entry.metadata))],
                entry.video_path, contract.video_filename(entry.event_id), entry.size_bytes,
                entry.sha256 or (entry.metadata.get("clip") or {}).get("sha256"), deadline, self._stop)
        except OSError as exc:
            return self._retry(entry, f"cannot read clip: {exc.strerror or exc}", None)
        headers["Content-Type"] = body.content_type
        sent_sha = (entry.sha256 or (entry.metadata.get("clip") or {}).get("sha256")) if entry.video_path else None
        cutter = DeadlineCutter()
        by_caller = deadline < own_deadline
        timer = threading.Timer(max(0.0, deadline - started), cutter.cut, args=("deadline",))
        timer.daemon = True
        self._cutter = cutter
        timer.start()
        try:
            with send_limits(budget_s, cutter):
                resp = self._session.post(cfg.url, data=body, headers=headers, verify=verify, cert=cert,
                                          timeout=(min(cfg.connect_timeout_s, max(0.001, deadline - started)),
                                                   budget_s),
                                          allow_redirects=False)
        except BodyAborted as exc:
            if exc.kind == "stop":
                return self._cut_short(entry, "stop")
            if exc.kind == "clip_changed":
                return self._retry_now(entry, self._without_video(entry, str(exc)))
            if by_caller:
                return self._cut_short(entry, "deadline")
            return self._retry(entry, f"too slow: {exc}", None)
        except (requests.RequestException, OSError) as exc:
            if cutter.reason is not None or self._stop.is_set():
                return self._cut(entry, by_caller, deadline - started)
            return self._retry(entry, describe_error(exc, cfg.url, budget_s if isinstance(
                exc, requests.exceptions.ReadTimeout) else None), None)
        finally:
            timer.cancel()
            self._cutter = None
            body.close()
        if cutter.reason is not None:
            # the socket was shut down under the reply: http.client takes a truncated header block as
            # complete, so whatever status it parsed is not the server's whole answer. Never delivered.
            return self._cut(entry, by_caller, deadline - started)
        elapsed = time.monotonic() - started
        self.metrics.upload_seconds.observe(elapsed)
        status = resp.status_code
        text = resp.text or ""
        if self._token:
            text = text.replace(self._token, "***")  # a server echoing the request must not leak it to logs
        said = reply_json(text)
        verdict = classify(status, reason_of(said) if status >= 400 else None)
        if verdict is Verdict.DELIVERED:
            problem = receipt_problem(sent_sha, said)
            if problem is not None:
                return self._retry(entry, f"HTTP {status}, but {problem}: the clip stays queued and is sent again",
                                   None)
            return self._finish(entry, UploadResult.DELIVERED, f"HTTP {status}", elapsed)
        if verdict is Verdict.DUPLICATE:
            return self._finish(entry, UploadResult.DUPLICATE, "HTTP 409: already delivered", elapsed)
        reply = describe_reply(status, text, entry.size_bytes)
        if verdict is Verdict.REDIRECT:
            where = escape_payload(urljoin(cfg.url, resp.headers.get("Location", "")), limit=REPLY_LOG_CHARS)
            return self._retry(entry, f"HTTP {status} redirect to {where.strip(chr(34))}: set upload.url to the "
                                      "final URL (redirects are not followed: a POST cannot be replayed safely)", None)
        if verdict is Verdict.RETRY:
            if status in (401, 403):
                self._load_token()  # a rotated credential is picked up without a restart
            retry_after = parse_retry_after(resp.headers.get(contract.HEADER_RETRY_AFTER), time.time())
            return self._retry(entry, reply, retry_after)
        if verdict is Verdict.CHECK_VIDEO and entry.video_path is not None:
            return self._check_video(entry, reply)
        return self._finish(entry, UploadResult.QUARANTINED, reply, hint=_quarantine_hint(status, cfg.url))

    def _check_video(self, entry: Entry, reply: str) -> UploadResult:
        """The server received other bytes than the metadata describes. Our file intact: the bytes changed
        on the way, send again. Damaged: the CID goes out without it, as for any damaged video."""
        damage = _video_damage(entry)
        if damage is None:
            return self._retry(entry, f"{reply} (the clip file here matches its metadata: sent again)", None)
        return self._retry_now(entry, self._without_video(entry, f"{damage}, after the server said: {reply}"))

    def _cut(self, entry: Entry, by_caller: bool, waited_s: float) -> UploadResult:
        """We ended the request, not the server. A stop or the caller's deadline leave the clip due as it
        was; the request's own deadline is a failed attempt."""
        if self._stop.is_set():
            return self._cut_short(entry, "stop")
        if by_caller:
            return self._cut_short(entry, "deadline")
        return self._retry(entry, f"timed out: no complete answer within {waited_s:.0f} s "
                                  "(connect + upload.read_timeout_s + size / upload.min_rate_bytes_per_s)", None)

    def _cut_short(self, entry: Entry, why: str) -> UploadResult:
        """The caller ended the attempt (stop, or the flush deadline): not the clip's failure."""
        log.info("upload cut short by %s cid=%s clip=%s (stays queued)", why, entry.cid, entry.event_id)
        return UploadResult.STOPPED

    def _without_video(self, entry: Entry, problem: str) -> Entry | None:
        """The clip's video is gone or damaged: the event still goes out, CID-only, saying why."""
        log.error("clip video lost cid=%s clip=%s reason=%s: sending the CID without video", entry.cid,
                  entry.event_id, problem)
        self.metrics.spool_videos_lost.inc()
        self._videos_lost += 1
        return self.spool.drop_video(entry.event_id, problem)

    def _retry_now(self, entry: Entry, new: Entry | None) -> UploadResult:
        if new is None:
            return UploadResult.QUARANTINED
        self.wake()
        return UploadResult.RETRY

    def _retry(self, entry: Entry, error: str, retry_after: float | None) -> UploadResult:
        attempts = entry.attempts + 1
        delay = self.backoff.delay(attempts, retry_after)
        self.spool.mark_failed(entry.event_id, error, time.monotonic() + delay)
        self.metrics.uploads.labels(result=UploadResult.RETRY).inc()
        log.warning("upload failed cid=%s clip=%s attempt=%d error=%s retry_in_s=%.2f%s", entry.cid, entry.event_id,
                    attempts, error, delay, f" retry_after_s={retry_after:g}" if retry_after is not None else "")
        self._notify(entry, UploadResult.RETRY)
        return UploadResult.RETRY

    def _finish(self, entry: Entry, result: UploadResult, detail: str, elapsed: float | None = None,
                hint: str = "") -> UploadResult:
        if result is UploadResult.QUARANTINED:
            self.spool.quarantine(entry.event_id, detail, hint)  # the spool logs it, once
        else:
            self.spool.mark_delivered(entry.event_id)
            self.metrics.upload_bytes.inc(entry.size_bytes)
            since = _since_detection(entry)
            if since is not None:
                self.metrics.detection_to_delivery_seconds.observe(since)
            self.metrics.last_delivery_timestamp_seconds.set(time.time())
            log.info("delivered cid=%s clip=%s bytes=%d attempts=%d upload_s=%.2f queued_s=%.1f%s", entry.cid,
                     entry.event_id, entry.size_bytes, entry.attempts + 1, elapsed or 0.0,
                     max(0.0, time.time() - entry.created_at),
                     " duplicate=yes" if result is UploadResult.DUPLICATE else "")
        self.metrics.uploads.labels(result=result).inc()
        self._notify(entry, result)
        return result

    def _notify(self, entry: Entry, result: UploadResult) -> None:
        if self.on_result is not None:
            try:
                self.on_result(entry.event_id, entry.cid, result)
            except Exception:
                log.exception("upload result callback failed")

    # --- draining -------------------------------------------------------------------------------

    def drain(self, timeout_s: float) -> bool:
        """Deliver until the spool is empty or the time is up; True when empty. Works with or without
        the worker thread (replay and `spool flush` use it without). Waits honour backoff and
        Retry-After; stop() ends it early."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.spool.head() is None:
                return True
            left = deadline - time.monotonic()
            if left <= 0 or not self.cfg.url or self._stop.is_set():
                return False
            if self._thread is not None and self._thread.is_alive():
                self.wake()
                self._stop.wait(min(0.05, left))
                continue
            if not self.deliver_once(deadline):
                self._stop.wait(min(max(self._idle_s(), 0.001), max(0.0, deadline - time.monotonic())))


def _video_problem(entry: Entry) -> str | None:
    """Why the queued clip file cannot be sent as it was queued, or None when it can."""
    assert entry.video_path is not None
    try:
        size = entry.video_path.stat().st_size
    except FileNotFoundError:
        return "clip file missing from the spool"
    except OSError as exc:
        return f"clip file unreadable: {exc.strerror or exc}"
    if size != entry.size_bytes:
        return f"clip file is {size} bytes, {entry.size_bytes} were queued"
    return None


def _video_damage(entry: Entry) -> str | None:
    """How the queued clip file differs from what its row and metadata say it is, or None (read whole)."""
    assert entry.video_path is not None
    problem = _video_problem(entry)
    if problem is not None:
        return problem
    clip = entry.metadata.get("clip") or {}
    if clip.get("size_bytes") is not None and clip["size_bytes"] != entry.size_bytes:
        return f"clip file is {entry.size_bytes} bytes, metadata.clip.size_bytes says {clip['size_bytes']}"
    try:
        actual = sha256_file(entry.video_path)
    except OSError as exc:
        return f"clip file unreadable: {exc.strerror or exc}"
    for said, where in ((entry.sha256, "the queue"), (clip.get("sha256"), "metadata.clip.sha256")):
        if said and said.lower() != actual:
            return f"clip file's sha256 is {actual}, {where} says {said}"
    return None


def _since_detection(entry: Entry) -> float | None:
    """Seconds since the CID was seen (metadata `detected_at`); since it was queued if that is unreadable.
    None when the clip was stamped on a clock not yet synchronised and the clock is now: NTP may have
    stepped it in between (by a year on a device without a real-time clock), so the difference says
    nothing."""
    if (entry.metadata.get("clock") or {}).get("synchronized") is False and clock_sync.synchronized():
        return None
    try:
        detected = datetime.fromisoformat(str(entry.metadata["detected_at"]).replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError):
        detected = entry.created_at
    return max(0.0, time.time() - detected)


def _quarantine_hint(status: int, url: str) -> str:
    """What to fix before `edge-agent spool requeue` sends a refused clip again."""
    requeue = "then run `edge-agent spool requeue`"
    if status in (404, 405):
        return f"upload.url ({url}) must be the edge server's {contract.CID_PATH} endpoint: fix it, {requeue}"
    if status == 413:
        return f"raise the server's body limit (receiver --max-bytes) or shorten clips (clip.max_s), {requeue}"
    return f"check upload.url ({url}) and the edge server's log, {requeue}"
