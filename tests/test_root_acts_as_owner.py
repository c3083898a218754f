"""An operator running a command as root on the service's spool cannot break the service: the command
becomes the owner of the spool (and of the no-read folder) before it opens a file of it, so every file
stays the service user's, and the service can still open its spool afterwards. Real processes: the
commands run as root, the service as the spool's owner (`nobody`, a user every Debian system has).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.media_factory import qr_image, write_gray_h264

ROOT = Path(__file__).resolve().parent.parent
USER = "nobody"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="root runs the commands; only root can be the operator")


def _python_for(user: pwd.struct_passwd) -> list[str] | None:
    """A Python that both root and `user` can run with edge-agent's packages: this one, or (when it lives
    where `user` cannot read, e.g. under /root) the system's Python of the same version with this venv's
    packages on its path, as a device's /usr/bin/python3 venv would be."""
    paths = sysconfig.get_paths()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), paths["purelib"], paths["platlib"]])}
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for exe in (sys.executable, f"/usr/bin/{version}"):
        if not Path(exe).exists():
            continue
        try:
            probe = subprocess.run([exe, "-c", "import edge_agent.cli, av, cv2, zxingcpp, pydantic, requests"],
                                   user=user.pw_uid, group=user.pw_gid, extra_groups=[], env=env, cwd="/",
                                   capture_output=True, timeout=60, check=False)
        except PermissionError:  # the user cannot even start it
            continue
        if probe.returncode == 0:
            return [exe]
    return None


@dataclass
class Site:
    """A device in a folder: the service's state directory owned by its user, a config, videos."""

    base: Path
    state: Path
    config: Path
    video: Path
    python: list[str]
    user: pwd.struct_passwd

    @property
    def spool(self) -> Path:
        return self.state / "spool"

    def env(self) -> dict[str, str]:
        paths = sysconfig.get_paths()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_AGENT", "STATE_DIRECTORY"))}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), paths["purelib"], paths["platlib"]])
        return env

    def as_root(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.python, "-m", "edge_agent.cli", *args], capture_output=True, text=True,
                              env=self.env(), cwd=self.base, timeout=timeout, check=False)

    def as_service(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {**self.env(), "HOME": self.user.pw_dir, "USER": self.user.pw_name}
        return subprocess.run([*self.python, "-m", "edge_agent.cli", *args], capture_output=True, text=True,
                              env=env, cwd=self.base, timeout=timeout, check=False, user=self.user.pw_uid,
                              group=self.user.pw_gid, extra_groups=[])

    def not_owned(self) -> list[str]:
        return [f"{p} ({pwd.getpwuid(p.lstat().st_uid).pw_name})" for p in [self.state, *self.state.rglob("*")]
                if p.lstat().st_uid != self.user.pw_uid]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_label_video(path: Path, seconds: float = 2.0, fps: int = 15) -> Path:
    """One readable CID and, beside it, a label with a corner torn off (located, unreadable: a no-read)."""
    w, h = 640, 360
    good = qr_image("CID-OWNER-1", 5)
    torn = qr_image("CID-TORN-1", 6)
    n = torn.shape[0]
    cv2.fillPoly(torn, [np.array([[n, n], [n - int(0.75 * n), n], [n, n - int(0.75 * n)]], np.int32)], 120)
    img = np.full((h, w), 120, np.uint8)
    img[40 : 40 + good.shape[0], 20 : 20 + good.shape[1]] = good
    img[40 : 40 + n, 330 : 330 + n] = torn
    return write_gray_h264(path, (img for _ in range(round(seconds * fps))), (w, h), fps)


@pytest.fixture(scope="module")
def python() -> list[str]:
    user = pwd.getpwnam(USER)
    found = _python_for(user)
    if found is None:
        pytest.skip(f"no Python with edge-agent's packages that {USER} can run")
    return found


def _readable_dir(prefix: str) -> Path:
    """A folder not under pytest's 0700 tmp: the service's user must reach it."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    base.chmod(0o755)
    return base


@pytest.fixture(scope="module")
def labels() -> Iterator[Path]:
    """The camera's video, made once: the commands only read it."""
    base = _readable_dir("edge-agent-owner-media-")
    try:
        yield make_label_video(base / "labels.mp4")
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def site(python: list[str], labels: Path) -> Iterator[Site]:
    user = pwd.getpwnam(USER)
    base = _readable_dir("edge-agent-owner-")
    try:
        state = base / "state"  # what the package's tmpfiles.d entry makes: /var/lib/edge-agent, the user's
        state.mkdir()
        os.chown(state, user.pw_uid, user.pw_gid)
        video = labels
        config = base / "config.yaml"
        config.write_text(f"upload:\n  url: http://127.0.0.1:{closed_port()}/cid\n  connect_timeout_s: 1\n"
                          f"spool:\n  dir: {state / 'spool'}\n  min_free_bytes: 0\n"
                          f"source:\n  kind: file\n  path: {video}\n", encoding="utf-8")
        yield Site(base, state, config, video, python, user)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
def test_root_commands_on_the_services_spool_leave_every_file_to_its_owner(site: Site) -> None:
    cfg = str(site.config)
    # the spool does not exist yet: root's flush would make spool.lock, queue.sqlite3, clips/, tmp/ its own
    flush = site.as_root("spool", "flush", "--timeout", "1", "--config", cfg)
    assert flush.returncode == 0, flush.stderr
    assert f"running as {USER}, the owner of {site.state}" in flush.stderr
    report = site.base / "report.json"
    replay = site.as_root("replay", "-q", "--drain-timeout", "0", "--report", str(report), str(site.video),
                          "--config", cfg)
    assert replay.returncode == 75, replay.stderr  # queued: nothing listens on upload.url
    data = json.loads(report.read_text())
    assert [e["cid"] for e in data["events"]] == ["CID-OWNER-1"]
    assert len(data["noreads"]) == 1 and data["noreads"][0]["image"].startswith(str(site.state / "noreads"))
    for args in (("spool", "status"), ("spool", "list", "--json"), ("spool", "requeue"), ("noreads",),
                 ("check", "--frames", "5", "--json")):
        res = site.as_root(*args, "--config", cfg)
        assert f"running as {USER}" in res.stderr, (args, res.stderr)
        assert res.returncode in (0, 1), (args, res.stdout, res.stderr)  # check: the server line FAILs
    check = json.loads(res.stdout)
    spool_line = next(r for r in check["results"] if r["name"] == "spool")
    assert spool_line["status"] == "PASS" and f"writable by {USER}" in spool_line["detail"], spool_line
    assert (site.spool / "queue.sqlite3").exists() and (site.spool / "spool.lock").exists()
    assert any((site.state / "noreads").glob("*.jpg"))
    assert site.not_owned() == []
    # and the service, as its user, still opens its spool: it replays the file source and queues its clip
    run = site.as_service("run", "--no-watch", "--config", cfg)
    assert "cannot start" not in run.stderr and "Permission denied" not in run.stderr, run.stderr
    assert run.returncode in (0, 75), run.stderr
    status = json.loads(site.as_service("spool", "status", "--json", "--config", cfg).stdout)
    assert status["clips"] == 2  # replay's clip and the service's own


@pytest.mark.slow
def test_root_on_a_spool_root_made_by_mistake_is_caught_by_check_with_the_fix(site: Site) -> None:
    """What an operator's `sudo edge-agent spool flush` of an earlier version left: root-owned queue and
    lock in the user's spool. The service cannot open it; check says so, and how to fix it."""
    cfg = str(site.config)
    made = site.as_service("spool", "flush", "--timeout", "1", "--config", cfg)
    assert made.returncode == 0, made.stderr
    for name in ("queue.sqlite3", "spool.lock"):
        os.chown(site.spool / name, 0, 0)
    service = site.as_service("spool", "flush", "--timeout", "1", "--config", cfg)
    assert service.returncode == 73 and "Permission denied" in service.stderr  # what the service meets
    res = site.as_root("check", "--frames", "5", "--json", "--config", cfg)
    line = next(r for r in json.loads(res.stdout)["results"] if r["name"] == "spool")
    assert res.returncode == 1 and line["status"] == "FAIL", line
    assert "queue.sqlite3 (owned by root, cannot write it)" in line["detail"]
    assert "spool.lock (owned by root, cannot write it)" in line["detail"]
    assert line["hint"].endswith(f"sudo chown -R {USER}: {site.spool}"), line["hint"]
    # the fix it names works
    subprocess.run(["chown", "-R", f"{USER}:", str(site.spool)], check=True)
    line = next(r for r in json.loads(site.as_root("check", "--frames", "5", "--json", "--config", cfg).stdout)
                ["results"] if r["name"] == "spool")
    assert line["status"] == "PASS", line


@pytest.mark.slow
def test_a_queue_database_only_readable_fails_check_though_the_folder_is_writable(site: Site) -> None:
    """The database itself is tried with a write, not only the folder: a queue the user can open but
    not write (read-only mode bits) FAILs."""
    cfg = str(site.config)
    assert site.as_service("spool", "flush", "--timeout", "1", "--config", cfg).returncode == 0
    (site.spool / "queue.sqlite3").chmod(0o444)
    res = site.as_service("check", "--frames", "5", "--json", "--config", cfg)
    line = next(r for r in json.loads(res.stdout)["results"] if r["name"] == "spool")
    assert line["status"] == "FAIL" and "queue.sqlite3" in line["detail"], line


@pytest.mark.slow
def test_an_unprivileged_user_on_another_users_spool_is_refused_with_the_command_to_use(site: Site) -> None:
    other = pwd.getpwnam("daemon")
    os.chown(site.state, other.pw_uid, other.pw_gid)
    res = site.as_service("spool", "flush", "--timeout", "1", "--config", str(site.config))
    assert res.returncode == 73, res.stderr
    assert f"{site.state} belongs to daemon, not to {USER}: run it as daemon: sudo -u daemon " in res.stderr
    assert "spool flush --timeout 1 --config" in res.stderr.splitlines()[-1]
    assert not site.spool.exists()


@pytest.mark.slow
def test_root_replay_of_a_video_the_owner_cannot_read_says_so(site: Site) -> None:
    private = site.base / "private"
    private.mkdir(mode=0o700)
    video = shutil.copy(site.video, private / "labels.mp4")
    res = site.as_root("replay", "-q", str(video), "--config", str(site.config))
    assert res.returncode == 66, res.stderr
    assert f"{video}: {USER} (the owner of {site.state}, which this command runs as) cannot read it" in res.stderr
    assert site.not_owned() == []


@pytest.mark.slow
def test_root_on_roots_own_spool_just_runs(site: Site, tmp_path: Path) -> None:
    cfg = tmp_path / "dev.yaml"
    cfg.write_text(f"spool:\n  dir: {tmp_path / 'spool'}\n", encoding="utf-8")
    res = site.as_root("spool", "flush", "--timeout", "1", "--config", str(cfg))
    assert res.returncode == 75 and "running as" not in res.stderr  # no upload.url: clips would wait
    assert (tmp_path / "spool" / "spool.lock").stat().st_uid == 0


@pytest.mark.slow
def test_the_service_users_spool_defaults_to_the_state_directory_and_check_names_what_is_missing(
        site: Site) -> None:
    """Outside systemd nothing sets STATE_DIRECTORY: the service's user (its HOME is /var/lib/edge-agent)
    still gets /var/lib/edge-agent/spool, and when that folder was never made, check says what makes it
    instead of suggesting the command just run."""
    if Path("/var/lib/edge-agent").exists():
        pytest.skip("/var/lib/edge-agent exists on this machine")
    cfg = site.base / "nospool.yaml"
    cfg.write_text(f"source:\n  kind: file\n  path: {site.video}\n", encoding="utf-8")
    env_home = {"HOME": "/var/lib/edge-agent"}
    show = subprocess.run([*site.python, "-m", "edge_agent.cli", "config", "show", "--json", "--config", str(cfg)],
                          capture_output=True, text=True, env={**site.env(), **env_home}, timeout=60, check=False)
    assert json.loads(show.stdout)["config"]["spool"]["dir"] == "/var/lib/edge-agent/spool"
    res = subprocess.run([*site.python, "-m", "edge_agent.cli", "check", "--frames", "5", "--json", "--config",
                          str(cfg)], capture_output=True, text=True, env={**site.env(), **env_home}, timeout=120,
                         check=False, user=site.user.pw_uid, group=site.user.pw_gid, extra_groups=[], cwd="/")
    line = next(r for r in json.loads(res.stdout)["results"] if r["name"] == "spool")
    assert line["status"] == "FAIL" and line["detail"].startswith("/var/lib/edge-agent/spool"), line
    assert line["hint"].startswith("/var/lib/edge-agent does not exist: the package's tmpfiles.d entry makes it")
    assert "systemd-tmpfiles --create" in line["hint"] and "sudo -u" not in line["hint"]
    assert not Path("/var/lib/edge-agent").exists()


@pytest.mark.slow
def test_root_replay_without_upload_keeps_its_no_reads_the_services(site: Site) -> None:
    """Without upload nothing goes to the spool, but the no-read pictures still go to the service's folder."""
    out = site.base / "out"
    out.mkdir(mode=0o777)
    out.chmod(0o777)
    res = site.as_root("replay", "-q", "--no-upload", "--output-dir", str(out), str(site.video),
                       "--config", str(site.config))
    assert res.returncode == 0, res.stderr
    assert f"running as {USER}, the owner of {site.state}" in res.stderr
    assert len(list(out.glob("*.mp4"))) == 1 and not site.spool.exists()
    assert len(list((site.state / "noreads").glob("*.jpg"))) == 1
    assert site.not_owned() == []
    unwritable = site.as_root("replay", "-q", "--no-upload", "--output-dir", str(site.base), str(site.video),
                              "--config", str(site.config))
    assert unwritable.returncode == 73
    assert unwritable.stderr.strip().splitlines()[-1] == (
        f"edge-agent replay: output folder {site.base}: Permission denied for {USER}, the user this runs as; "
        "give --output-dir a folder it can write (e.g. under /tmp)")
