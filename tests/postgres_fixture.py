"""A real, throwaway PostgreSQL (Debian's `postgresql` package: initdb + pg_ctl) on a loopback port
with its own cluster in a temporary folder, stopped and deleted at the end. PostgreSQL refuses to
run as root, so under root the cluster belongs to the `postgres` system user."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any


def pg_binary(name: str) -> str | None:
    """`initdb`/`pg_ctl` on PATH, else Debian's versioned folder (not on PATH by default)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    def __init__(self, fast: bool = True):
        self.fast = fast  # fsync off: for tests, where durability across power loss is not the point
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="edge-pg-"))
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "postgres"
            pw = pwd.getpwnam(self.user)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)

    def _run(self, *argv: str, timeout: float = 120) -> None:
        kw: dict[str, Any] = {"user": self.user} if self.user else {}
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, cwd=self.root, **kw)
        if res.returncode != 0:
            raise RuntimeError(f"{Path(argv[0]).name} failed: {(res.stderr or res.stdout).strip()[-1500:]}")

    def start(self) -> Postgres:
        initdb, pg_ctl = pg_binary("initdb"), pg_binary("pg_ctl")
        if not initdb or not pg_ctl:
            raise FileNotFoundError("initdb/pg_ctl (apt-get install postgresql)")
        data = self.root / "data"
        self._run(initdb, "-D", str(data), "-U", "edge", "-A", "trust", "-E", "UTF8", "--no-sync")
        opts = f"-h 127.0.0.1 -p {self.port} -k {self.root} -c max_connections=100"
        if self.fast:
            opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(pg_ctl, "-D", str(data), "-l", str(self.root / "postgres.log"), "-o", opts, "-w", "-t", "60",
                  "start")
        return self

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://edge@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        import psycopg

        name = f"t{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        pg_ctl = pg_binary("pg_ctl")
        if pg_ctl and (self.root / "data" / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run(pg_ctl, "-D", str(self.root / "data"), "-m", "fast", "-w", "stop", timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)
