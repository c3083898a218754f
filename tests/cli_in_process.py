"""`edge-agent ARGS` run through the CLI's own entry point inside the test process: what a command prints
and returns is what a shell sees, without an interpreter start and the media libraries' import for each
(exit codes as a real process are pinned in test_exit_codes.py). A test takes the `in_process` fixture
(`in_process("spool", "status", ...)`) or calls `run_in_process` itself."""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from edge_agent.cli import main

Cli = Callable[..., subprocess.CompletedProcess[str]]


@contextlib.contextmanager
def root_logger_as_found() -> Iterator[None]:
    """The root logger's level and handlers as they were before the block: a command run in this process
    sets them up as for a process of its own, with a handler bound to the test's captured stderr."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        yield
    finally:
        root.setLevel(level)
        for h in root.handlers[:]:
            if h not in handlers:
                root.removeHandler(h)


def run_in_process(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                   *args: str) -> subprocess.CompletedProcess[str]:
    """`edge-agent ARGS` in this process: its exit code, stdout and stderr. What a command sets up as for
    a process of its own (the root logger's level and handlers, its SIGINT/SIGTERM handlers) is undone
    after it."""
    on_signal = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    capsys.readouterr()
    try:
        with root_logger_as_found():
            code = main(list(args))
    except SystemExit as exc:  # what a process would exit with (a command may end by sys.exit)
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    finally:
        for sig, handler in on_signal.items():
            signal.signal(sig, handler)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out, err)


@pytest.fixture
def in_process(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    """`run_in_process` bound to this test's captured output."""
    return functools.partial(run_in_process, capsys, monkeypatch)
