"""`python -m edge_agent.cli ARGS` (or the reference receiver) as a process of its own, without paying an
interpreter start and the media libraries' import for each one.

The suite starts a couple of hundred agent processes, and each spent most of a CPU-second importing PyAV,
OpenCV, numpy, zxing-cpp and pydantic before it did anything: on two cores that was a fifth of the whole
run. Here a process is forked from a server that has imported them once (multiprocessing's forkserver,
started once per test process, itself with no thread running), and after the fork it does what
`python -m edge_agent.cli ARGS` does: the CLI's own `main`, its own pid, its own signal dispositions,
the environment, working directory, stdin/stdout/stderr it was given, `sys.argv` as `-m` sets it, and its
exit code (a signal's death as -N) as the caller sees a process's. `popen()` and `run()` take
subprocess's arguments, so a test reads as it would with subprocess.

What only a fresh interpreter shows stays on subprocess: a process started with a signal ignored
(preexec_fn), another user, a sitecustomize (the shifted clock), `unshare`, the installed console
script, and at least one real `python -m edge_agent.cli` per exit code (tests/test_exit_codes.py).
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing import reduction
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
CLI_PATH = str(ROOT / "edge_agent" / "cli.py")  # sys.argv[0] of `python -m edge_agent.cli`

FORKSERVER = multiprocessing.get_context("forkserver")
# Imported once in the server, so each forked process starts with them: the agent's commands (which
# bring PyAV, OpenCV, numpy, zxing-cpp, zbar, pydantic and requests) and the reference receiver
# (FastAPI, uvicorn). Importing them starts no thread, so the fork is safe.
FORKSERVER.set_forkserver_preload([
    "edge_agent.cli", "edge_agent.commands.run", "edge_agent.commands.replay", "edge_agent.commands.spool",
    "edge_agent.commands.config", "edge_agent.commands.check", "edge_agent.commands.snapshot",
    "edge_agent.commands.noreads", "edge_agent.app", "edge_agent.receiver.app", "edge_agent.receiver.cli",
    "uvicorn",
])


class _Fd:
    """A descriptor handed to the forked process (sent over the fork server's socket as it starts)."""

    def __init__(self, fd: int):
        self.fd = fd

    def __reduce__(self) -> tuple[Any, tuple[Any]]:
        return _inherit, (reduction.DupFd(self.fd),)


def _inherit(dup: Any) -> int:
    return int(dup.detach())


def _child(program: str, argv: list[str], env: dict[str, str], cwd: str, fds: tuple[_Fd | int, ...]) -> None:
    """In the forked process: its descriptors, environment and directory, then the program's main()."""
    for target, fd in enumerate(fds):
        assert isinstance(fd, int)
        os.dup2(fd, target)
        if fd > 2:
            os.close(fd)
    # multiprocessing's default as a process of its own has it (fork), not the server's: a library that
    # makes a lock with it (tqdm) would otherwise register it with the test process's resource tracker
    multiprocessing.set_start_method(None, force=True)
    os.environ.clear()
    os.environ.update(env)
    time.tzset()
    os.chdir(cwd)
    unbuffered = bool(env.get("PYTHONUNBUFFERED"))
    sys.stdout.reconfigure(write_through=unbuffered)  # type: ignore[union-attr]
    sys.stderr.reconfigure(line_buffering=True, write_through=unbuffered)  # type: ignore[union-attr]
    if program == "receiver":
        from edge_agent.receiver.cli import main

        sys.argv = [str(ROOT / "edge_agent" / "receiver" / "__main__.py"), *argv]
    else:
        from edge_agent.cli import main

        sys.argv = [CLI_PATH, *argv]
    sys.exit(main(argv))


class AgentProcess:
    """A forked agent process with the part of subprocess.Popen's interface the tests use."""

    def __init__(self, argv: list[str], *, program: str = "cli", env: dict[str, str] | None = None,
                 cwd: str | os.PathLike[str] | None = None, stdout: Any = None, stderr: Any = None,
                 text: bool = False):
        self.args = [*argv]
        self.stdout: IO[Any] | None = None
        self.stderr: IO[Any] | None = None
        opened: list[int] = []  # descriptors of ours the child gets a copy of: closed once it has them

        def fd_for(spec: Any, default: int) -> int:
            if spec is None:
                return default
            if spec == subprocess.DEVNULL:
                fd = os.open(os.devnull, os.O_RDWR)
                opened.append(fd)
                return fd
            if spec == subprocess.PIPE:
                r, w = os.pipe()
                opened.append(w)
                stream = open(r, "r" if text else "rb")  # noqa: SIM115 - the caller reads it as Popen's
                if default == 1:
                    self.stdout = stream
                else:
                    self.stderr = stream
                return w
            if isinstance(spec, int):
                return spec
            return int(spec.fileno())

        stdin = os.open(os.devnull, os.O_RDONLY)
        opened.append(stdin)
        out = fd_for(stdout, 1)
        err = out if stderr == subprocess.STDOUT else fd_for(stderr, 2)
        self._p = FORKSERVER.Process(
            target=_child, daemon=True,
            args=(program, self.args, dict(os.environ if env is None else env), str(cwd or os.getcwd()),
                  (_Fd(stdin), _Fd(out), _Fd(err))))
        try:
            self._p.start()
        finally:
            for fd in opened:
                os.close(fd)
        self.pid = self._p.pid

    @property
    def returncode(self) -> int | None:
        return self._p.exitcode

    def poll(self) -> int | None:
        return self._p.exitcode

    def send_signal(self, sig: int) -> None:
        if self._p.exitcode is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(15)

    def kill(self) -> None:
        self.send_signal(9)

    def wait(self, timeout: float | None = None) -> int:
        self._p.join(timeout)
        if self._p.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return self._p.exitcode

    def communicate(self, timeout: float | None = None) -> tuple[Any, Any]:
        """Read stdout and stderr (when piped) to their end and wait, as Popen.communicate."""
        got: dict[str, Any] = {}
        readers = [threading.Thread(target=lambda k=k, s=s: got.__setitem__(k, s.read()), daemon=True)
                   for k, s in (("out", self.stdout), ("err", self.stderr)) if s is not None]
        for t in readers:
            t.start()
        self.wait(timeout)
        for t in readers:
            t.join(timeout)
        return got.get("out"), got.get("err")


def popen(argv: list[str], **kwargs: Any) -> AgentProcess:
    """`python -m edge_agent.cli ARGV` started as subprocess.Popen would (stdout, stderr, env, cwd, text)."""
    return AgentProcess(argv, **kwargs)


def run(argv: list[str], *, capture_output: bool = False, text: bool = False, env: dict[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None, timeout: float | None = None,
        check: bool = False) -> subprocess.CompletedProcess[Any]:
    """`python -m edge_agent.cli ARGV` to its end, as subprocess.run would; output captured through files
    (no pipe to drain while it runs)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = AgentProcess(argv, env=env, cwd=cwd, stdout=out if capture_output else None,
                            stderr=err if capture_output else None)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        outputs: list[Any] = [None, None]
        if capture_output:
            for i, f in enumerate((out, err)):
                f.seek(0)
                data = f.read()
                outputs[i] = data.decode() if text else data
    res = subprocess.CompletedProcess(argv, code, *outputs)
    if check:
        res.check_returncode()
    return res
