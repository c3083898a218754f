"""Reloading the config when its file changes, and telling live keys from restart-only ones.

Editors save in different ways: in place, by writing a temporary file and renaming it over the
original (vim, nano with backups, Ansible), or by deleting and recreating. Watching the file
itself misses the rename; watching its folder (the watchdog library, inotify on Linux) sees all
of them. Events come in bursts, so a reload waits until the folder has been quiet for
`debounce_s`, and happens only when the content really changed.

Each look at the config after a change (a *check*) ends with a decision: the new config handed
over, its errors reported, the content unchanged, or the file away mid-save. `checks`,
`last_check` and `wait_checked` make that decision observable, so a caller that changed the file
(a deployment step, a test) can wait until the watcher has looked and know what it decided rather
than wait a guessed time.

SIGHUP (`systemctl reload`) goes through the same check (`reload_now`), at once and in turn with
the timer's: a save and a reload count one reload whichever comes first (the second finds the content
unchanged), and the checks are decided in the order the files were read, so a reload of an older
content never lands after a newer one.

The fragments in the config's `.d` folder (config/loader.py) are part of the config: the folder is
watched too (from the moment it appears), and the content compared is the main file and every
fragment together.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from edge_agent.config import Config, ConfigError, fragment_dir, fragments, load_config
from edge_agent.config.live import classify_changes as classify_changes  # the reload log's classes
from edge_agent.config.live import reload_marks
from edge_agent.config.yaml_limits import MAX_BYTES, regular_file_problem
from edge_agent.redact import redact_data
from edge_agent.str_enum import StrEnum

log = logging.getLogger(__name__)


# Longest value shown in a reload log line (a pipe command can be long).
VALUE_CHARS = 80


def _shown(value: Any) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    value = redact_data(value)
    if isinstance(value, str):
        text = value or '""'
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value))  # 5.0 -> 5, as it is usually written in the file
    else:
        text = json.dumps(value, default=str)
    text = " ".join(text.split())
    return text if len(text) <= VALUE_CHARS else text[:VALUE_CHARS] + "..."


def describe_changes(old: Config, new: Config, keys: list[str]) -> str:
    """`detector.cooldown_s 5 -> 2, clip.pre_roll_s 2.5 -> 1` for the keys classify_changes gave, so
    the log says what the reload did (passwords in URLs masked)."""
    a, b = reload_marks(old), reload_marks(new)
    return ", ".join(f"{k} {_shown(a.get(k, (None,))[0])} -> {_shown(b.get(k, (None,))[0])}" for k in keys)


class _ShutdownRaceFilter(logging.Filter):
    """watchdog's inotify emitter logs `queue_events() called when the thread is inactive` at ERROR when
    stop() lands while its thread is between two reads (the stop removes the watch, which wakes the read
    with an event for a watch that is gone). Nothing is lost: the observer is stopping on purpose. That
    one message is dropped so a clean stop does not leave an ERROR in the journal; others pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.ERROR and record.msg == _INACTIVE_MSG)


# inotify reports opening and closing without a write too; they change nothing
_READS = ("opened", "closed_no_write")
_INACTIVE_MSG = "InotifyEmitter.queue_events() called when the thread is inactive"
_RACE_FILTER = _ShutdownRaceFilter()


class CheckOutcome(StrEnum):
    """What one check of the config decided."""

    LOADED = "loaded"  # the content changed and loads: handed to on_config
    INVALID = "invalid"  # the content changed and does not load: its errors went to on_error
    UNCHANGED = "unchanged"  # the same content as the last check (a touch, a save without edits)
    AWAY = "away"  # the main file is missing (mid-rename, or deleted): the next event brings it back
    FAILED = "failed"  # on_config or on_error raised (the timer thread logs its traceback)


@dataclass(frozen=True)
class ConfigCheck:
    """One finished check: its place in the count and what it decided."""

    number: int  # checks finished since the watcher was made, this one included
    outcome: CheckOutcome


class ConfigWatcher:
    """Calls `on_config` with the new config, or `on_error` with its located errors, once per burst
    of changes to the config file or its fragments (from the watchdog and timer threads)."""

    def __init__(self, path: Path, on_config: Callable[[Config], None], on_error: Callable[[list[str]], None],
                 debounce_s: float = 0.5):
        self.fragment_dir = fragment_dir(Path(path).absolute())
        self.path = Path(path).resolve()
        self.on_config = on_config
        self.on_error = on_error
        self.debounce_s = debounce_s
        self._digest = self._hash()
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._checked = threading.Condition(self._lock)  # a check finished
        self._check_lock = threading.Lock()  # one check at a time, even when a new timer fires during a slow one
        self._scheduled = 0  # timers started: only the newest one checks (the debounce)
        self._done = 0  # the timer whose check finished last
        self._last: ConfigCheck | None = None
        self._observer: Any = None
        self._fragment_watch: Any = None

    def _hash(self) -> bytes | None:
        """The main file and every fragment (names and contents); None while the main file is away.
        A file that cannot be read counts as content of its own, so the load runs and says why. Read
        no further than a config may be, and a fragment that is no file (a folder, a dangling link, a
        pipe that would never end) not at all: its problem is its content."""
        h = hashlib.sha256()

        def add(p: Path, fragment: bool) -> None:
            problem = regular_file_problem(p) if fragment else None
            if problem is not None:
                h.update(f"\0{problem}".encode())
                return
            try:
                with open(p, "rb") as f:
                    h.update(f.read(MAX_BYTES + 1))
            except FileNotFoundError:
                if not fragment:
                    raise
                h.update(b"\0gone")  # removed between the listing and the read: the next event says
            except OSError as exc:
                h.update(f"\0unreadable {exc.errno}".encode())

        try:
            add(self.path, False)
            for f in fragments(self.path):
                h.update(b"\0" + f.name.encode() + b"\0")
                add(f, True)
        except FileNotFoundError:
            return None  # mid-rename or deleted: the next event brings it back
        except ConfigError as exc:  # the folder itself cannot be read
            h.update(str(exc).encode())
        return h.digest()

    def start(self) -> None:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        watcher = self
        inotify_log = logging.getLogger("watchdog.observers.inotify")
        if _RACE_FILTER not in inotify_log.filters:
            inotify_log.addFilter(_RACE_FILTER)

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                if event.event_type in _READS:
                    return  # our own reads of the file and the folder: reacting to them would loop
                paths = {getattr(event, "src_path", ""), getattr(event, "dest_path", "")}
                names = {Path(str(p)).name for p in paths if p}
                if watcher.path.name in names:
                    watcher._schedule()
                if watcher.fragment_dir.name in names:  # the folder appeared, went or was renamed
                    watcher._watch_fragments()
                    watcher._schedule()

        class FragmentHandler(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                if event.event_type in _READS:
                    return
                watcher._schedule()

        self._fragment_handler = FragmentHandler()
        self._observer = Observer()
        self._observer.schedule(Handler(), str(self.path.parent), recursive=False)
        self._watch_fragments()
        self._observer.daemon = True
        self._observer.start()

    def _watch_fragments(self) -> None:
        """Watch the fragment folder if it is there; a folder removed and made again gets a new watch."""
        with self._lock:
            if self._fragment_watch is not None:
                with contextlib.suppress(KeyError, OSError):  # its folder is gone, and with it the watch
                    self._observer.unschedule(self._fragment_watch)
                self._fragment_watch = None
            if not self.fragment_dir.is_dir():
                return
            try:
                self._fragment_watch = self._observer.schedule(self._fragment_handler, str(self.fragment_dir),
                                                               recursive=False)
            except OSError as exc:
                log.warning("config fragments not watched (SIGHUP still reloads them): %s: %s",
                            self.fragment_dir, exc)

    def stop(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(2)

    # --- what the checks decided (any thread) ---------------------------------------------------

    @property
    def checks(self) -> int:
        """Checks finished so far."""
        with self._lock:
            return self._last.number if self._last else 0

    @property
    def last_check(self) -> ConfigCheck | None:
        """The last finished check; None before the first."""
        with self._lock:
            return self._last

    def wait_checked(self, after: int, timeout: float) -> ConfigCheck | None:
        """Block until a check numbered above `after` has finished and no other is due (the events
        seen so far are all decided); returns the last check, or None at the timeout. Take `after`
        from `checks` before changing the file."""
        with self._checked:
            settled = self._checked.wait_for(
                lambda: self._last is not None and self._last.number > after and self._done == self._scheduled,
                timeout)
            return self._last if settled else None

    # --- the debounce and the check -------------------------------------------------------------

    def _schedule(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._scheduled += 1
            self._timer = threading.Timer(self.debounce_s, self._check, args=(self._scheduled,))
            self._timer.daemon = True
            self._timer.start()

    def reload_now(self) -> ConfigCheck:
        """SIGHUP's check: made at once, in turn with the timer's. A pending timer stands down (this
        check reads what it would have); content the timer has already decided on is UNCHANGED and
        reloads nothing, so one save plus `systemctl reload` is one reload."""
        with self._check_lock:
            with self._lock:
                if self._timer is not None:
                    self._timer.cancel()
                self._scheduled += 1
                seq = self._scheduled
            return self._run_check(seq)

    def _check(self, seq: int) -> None:
        with self._check_lock:
            with self._lock:
                if seq != self._scheduled:
                    return  # a newer event (or a SIGHUP) came as this timer fired: that one checks
            self._run_check(seq)

    def _run_check(self, seq: int) -> ConfigCheck:
        """One check, with `_check_lock` held: decided, counted, waiters told."""
        outcome = CheckOutcome.FAILED
        try:
            outcome = self._decide()
        finally:  # counted even when a callback raised, so no waiter hangs on it
            with self._checked:
                self._done = seq
                self._last = ConfigCheck((self._last.number if self._last else 0) + 1, outcome)
                self._checked.notify_all()
                done = self._last
            log.debug("config checked: %s path=%s", outcome, self.path)
        return done

    def _decide(self) -> CheckOutcome:
        digest = self._hash()
        if digest is None:
            return CheckOutcome.AWAY
        if digest == self._digest:
            return CheckOutcome.UNCHANGED
        self._digest = digest
        try:
            cfg = load_config(self.path)
        except ConfigError as exc:
            self.on_error(exc.lines)
            return CheckOutcome.INVALID
        merged = fragments(self.path)
        log.info("config changed: %s%s", self.path, f" + {len(merged)} fragment{'s' if len(merged) > 1 else ''} "
                 f"in {self.fragment_dir}" if merged else "")
        self.on_config(cfg)
        return CheckOutcome.LOADED
