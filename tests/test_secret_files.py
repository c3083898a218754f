"""A secret file must be private: the bearer token's and the web password's file are 0600 or 0640 and
belong to the agent's user or root, else refused in one line naming the file and the command that fixes
it: by `run` (the web password: exit 78), by the uploader (clips wait, as for an unreadable token), and
by `check` (a FAIL line with the command as its hint). systemd's credentials are private by
construction and taken as they are."""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

import pytest

from edge_agent import __version__
from edge_agent.config import HttpConfig
from edge_agent.delivery.credentials import CredentialError, read_secret
from edge_agent.delivery.spool import Spool
from edge_agent.delivery.uploader import Uploader
from edge_agent.metrics import Metrics
from edge_agent.service.http import access_for
from tests import agent_process
from tests.cli_in_process import Cli
from tests.flaky_server import FlakyServer
from tests.receiver_fixture import free_port
from tests.spool_helpers import add_clip, fast_upload, spool_config

ME = pwd.getpwuid(os.geteuid()).pw_name


def secret(path: Path, mode: int, text: str = "s3cret-value") -> Path:
    path.write_text(text + "\n", encoding="utf-8")
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o400, 0o440])
def test_a_private_secret_file_is_read(tmp_path: Path, mode: int) -> None:
    assert read_secret(secret(tmp_path / "token", mode), "upload token") == "s3cret-value"


@pytest.mark.parametrize(("mode", "who"), [(0o644, "every user of this machine can read it"),
                                           (0o604, "every user of this machine can read it"),
                                           (0o620, "its group can change it"),
                                           (0o601, "every user of this machine can get at it")],
                         ids=["0644", "0604", "0620", "0601"])
def test_a_secret_file_others_can_get_at_is_refused_with_the_chmod_to_run(tmp_path: Path, mode: int,
                                                                          who: str) -> None:
    path = secret(tmp_path / "token", mode)
    with pytest.raises(CredentialError) as err:
        read_secret(path, "upload token")
    assert str(err.value) == (f"upload token file {path} has mode {mode:04o}: {who}; a secret file must be 0600 or "
                              f"0640: run `chmod 600 {path}`")
    assert err.value.fix == f"chmod 600 {path}" and "s3cret" not in str(err.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_a_secret_file_another_user_owns_is_refused_with_the_chown_to_run(tmp_path: Path) -> None:
    path = secret(tmp_path / "http-password", 0o600)
    os.chown(path, pwd.getpwnam("nobody").pw_uid, -1)
    with pytest.raises(CredentialError) as err:
        read_secret(path, "http password")
    assert str(err.value) == (f"http password file {path} belongs to nobody, not to {ME} (the user the agent runs "
                              f"as), so nobody can change or read it: run `sudo chown {ME} {path} && sudo chmod 600 "
                              f"{path}`")


def test_a_systemd_credential_is_taken_as_systemd_made_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    path = secret(creds / "upload-token", 0o644)  # what its mode is there is systemd's business
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert read_secret(path, "upload token") == "s3cret-value"
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "elsewhere"))
    with pytest.raises(CredentialError):
        read_secret(path, "upload token")


def test_the_uploader_holds_clips_on_a_token_others_can_read_and_sends_once_it_is_private(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(spool_config(tmp_path / "spool"))
    add_clip(spool)
    token = secret(tmp_path / "token", 0o644, "t0ken-9")
    with FlakyServer() as server:
        up = Uploader(spool, fast_upload(server.url, token_file=str(token)), Metrics(), __version__)
        assert not up.drain(0.3)
        assert server.seen == [] and spool.head() is not None
        assert f"upload token file {token} has mode 0644" in caplog.text and f"chmod 600 {token}" in caplog.text
        token.chmod(0o600)  # fixed without a restart
        assert up.drain(5)
    assert server.seen[-1].headers["Authorization"] == "Bearer t0ken-9"
    spool.close()


def test_a_login_in_the_upload_url_beside_a_token_is_refused_not_sent_in_its_place(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, in_process: Cli) -> None:
    """A request carries one Authorization header: requests would send the URL's login as Basic auth
    in place of the token, so a server checking the token would refuse every clip, or one accepting the
    login would never see the token the owner set."""
    spool = Spool(spool_config(tmp_path / "spool"))
    add_clip(spool)
    token = secret(tmp_path / "token", 0o600, "t0ken-9")
    with FlakyServer() as server:
        url = server.url.replace("http://", "http://edge:UpPass456@")
        up = Uploader(spool, fast_upload(url, token_file=str(token)), Metrics(), __version__)
        assert not up.drain(0.3)
        assert server.seen == [] and spool.head() is not None  # kept, not sent with the wrong login
        assert "upload.url carries a login and a bearer token is set" in caplog.text
        assert "UpPass456" not in caplog.text and "t0ken-9" not in caplog.text
    spool.close()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"source:\n  kind: file\n  path: {tmp_path / 'none.mp4'}\nspool:\n  dir: {tmp_path / 'spool'}\n"
                   f"upload:\n  url: {url}\n  token_file: {token}\n")
    res = in_process("check", "--seconds", "1", "--json", "--config", str(cfg))
    lines = {r["name"]: r for r in json.loads(res.stdout)["results"]}
    assert lines["token"]["status"] == "FAIL", lines["token"]
    assert "upload.url carries a login" in lines["token"]["detail"] and "UpPass456" not in res.stdout
    assert "remove" in lines["token"]["hint"]


def test_a_tls_private_key_others_can_read_is_refused_for_uploads_and_the_web_server(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, in_process: Cli) -> None:
    """OpenSSL reads the keys itself, so the agent checks their modes as it does its own secrets: the
    uploader holds clips, the web server is refused (run exits 78), check FAILs each with the chmod."""
    cert = secret(tmp_path / "client.pem", 0o644, "certificate")
    key = secret(tmp_path / "client.key", 0o644, "key")
    with pytest.raises(CredentialError) as err:
        access_for(HttpConfig(cert_file=str(cert), key_file=str(key)))
    assert str(err.value).startswith(f"http TLS key file {key} has mode 0644") and err.value.fix == f"chmod 600 {key}"
    spool = Spool(spool_config(tmp_path / "spool"))
    add_clip(spool)
    with FlakyServer() as server:
        up = Uploader(spool, fast_upload(server.url, cert_file=str(cert), key_file=str(key)), Metrics(), __version__)
        assert not up.drain(0.3)
        assert server.seen == [] and f"upload TLS key file {key} has mode 0644" in caplog.text
        cfg = tmp_path / "config.yaml"
        cfg.write_text(f"source:\n  kind: file\n  path: {tmp_path / 'none.mp4'}\nspool:\n  dir: {tmp_path / 'spool'}\n"
                       f"upload:\n  url: {server.url}\n  cert_file: {cert}\n  key_file: {key}\n")
        res = in_process("check", "--seconds", "1", "--json", "--config", str(cfg))
        lines = {r["name"]: r for r in json.loads(res.stdout)["results"]}
        assert lines["server"]["status"] == "FAIL" and lines["server"]["hint"] == f"chmod 600 {key}", lines["server"]
        key.chmod(0o600)  # fixed without a restart
        assert up.drain(5)
    spool.close()


def test_check_fails_the_token_and_web_lines_with_the_command_as_the_hint(tmp_path: Path, in_process: Cli) -> None:
    token = secret(tmp_path / "upload-token", 0o644)
    password = secret(tmp_path / "http-password", 0o640)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"source:\n  kind: file\n  path: {tmp_path / 'none.mp4'}\nspool:\n  dir: {tmp_path / 'spool'}\n"
                   f"upload:\n  url: http://127.0.0.1:{free_port()}/cid\n  token_file: {token}\n"
                   f"http:\n  port: {free_port()}\n  password_file: {password}\n")
    res = in_process("check", "--seconds", "1", "--json", "--config", str(cfg))
    lines = {r["name"]: r for r in json.loads(res.stdout)["results"]}
    assert res.returncode == 1
    assert lines["token"]["status"] == "FAIL" and lines["token"]["hint"] == f"chmod 600 {token}"
    assert f"upload token file {token} has mode 0644" in lines["token"]["detail"]
    assert lines["web"]["status"] == "PASS" and "password-protected" in lines["web"]["detail"]  # 0640 is private
    password.chmod(0o666)
    res = in_process("check", "--seconds", "1", "--config", str(cfg))
    assert f"FAIL  web       http password file {password} has mode 0666: every user of this machine can read " \
           f"it; a secret file must be 0600 or 0640: run `chmod 600 {password}`" in res.stdout, res.stdout
    assert f"-> chmod 600 {password}" in res.stdout


@pytest.mark.slow
def test_run_refuses_a_web_password_others_can_read_in_one_line_with_78(tmp_path: Path) -> None:
    password = secret(tmp_path / "http-password", 0o644)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"source:\n  kind: file\n  path: {tmp_path / 'none.mp4'}\nspool:\n  dir: {tmp_path / 'spool'}\n"
                   f"http:\n  port: {free_port()}\n  password_file: {password}\n")
    res = agent_process.run(["run", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 78, res.stderr
    refused = [line for line in res.stderr.splitlines() if "web server refused" in line]
    assert len(refused) == 1 and refused[0].endswith(
        f"web server refused: http password file {password} has mode 0644: every user of this machine can read it; "
        f"a secret file must be 0600 or 0640: run `chmod 600 {password}`"), res.stderr
    assert "Traceback" not in res.stderr
