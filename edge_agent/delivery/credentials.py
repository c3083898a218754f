"""The bearer token for uploads and the web password: from a file, or from systemd's credentials.

With `LoadCredential=upload-token:/etc/edge-agent/upload-token` in the unit, systemd hands the
service a private copy readable only by it, under $CREDENTIALS_DIRECTORY. Errors name the file,
never its content; the token itself is never logged.

A secret file of our own must be private: mode 0600 or 0640 (no one but its owner and its group
reads it, no one but its owner writes it), owned by the user the agent runs as or by root (another
user who owns it could change it, or read it whatever its mode). One that is not is refused with the
`chmod`/`chown` that makes it so: a token any local user can read is a token every local user has.
systemd's credentials are private by construction and not checked.
"""

from __future__ import annotations

import grp
import os
import pwd
import shlex
import stat
from pathlib import Path
from urllib.parse import urlsplit

from edge_agent.config import UploadConfig

CREDENTIAL_NAME = "upload-token"
# What a secret file's mode may allow beyond its owner: its group reading it (0640), nothing else.
_GROUP_READ = stat.S_IRGRP


class CredentialError(Exception):
    """A secret that cannot be used, in one line naming the file; `fix` is the command that mends it
    when there is one (for `check`'s hint)."""

    def __init__(self, message: str, fix: str = ""):
        super().__init__(message)
        self.fix = fix


def secret_path(setting: str | None, default_name: str) -> Path | None:
    """The file a secret is read from: the setting, where a bare name may be a systemd credential;
    else the credential `default_name` when systemd handed one over; else None."""
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if setting:
        p = Path(setting)
        # a bare name refers to a systemd credential when one by that name exists
        if creds and os.sep not in setting and (Path(creds) / setting).is_file():
            return Path(creds) / setting
        return p
    if creds and (Path(creds) / default_name).is_file():
        return Path(creds) / default_name
    return None


def require_private(path: Path, what: str) -> None:
    """Raise CredentialError unless `path` is private (see the module's rule) or a systemd credential:
    for secrets read here and for TLS private keys that OpenSSL reads."""
    try:
        st = path.stat()
    except OSError as exc:
        raise CredentialError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None
    if not _systemd_credential(path):
        problem = _not_private(path, st, what)
        if problem is not None:
            raise problem


def read_secret(path: Path, what: str) -> str:
    """One printable line without spaces, from a private file; errors name the file, never the content."""
    require_private(path, what)
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise CredentialError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CredentialError(f"{what} file {path} is not text") from None
    if not secret or any(c.isspace() for c in secret) or not secret.isprintable():
        raise CredentialError(f"{what} file {path} must hold one {what.split()[-1]} on one line")
    return secret


def token_path(cfg: UploadConfig) -> Path | None:
    return secret_path(cfg.token_file, CREDENTIAL_NAME)


def load_token(cfg: UploadConfig) -> str | None:
    """The bearer token, if one is set, for the uploader and `check` alike. A login in upload.url beside
    it is refused: a request carries one Authorization header and requests would fill it with the URL's
    login (Basic) in place of the token, silently."""
    path = token_path(cfg)
    if path is None:
        return None
    token = read_secret(path, "upload token")
    if cfg.url and urlsplit(cfg.url).username is not None:
        raise CredentialError(
            f"upload.url carries a login and a bearer token is set ({path}): a request sends only one of "
            "them, the login in place of the token",
            "remove user:password@ from upload.url to send the token, or unset upload.token_file (and the "
            "upload-token credential) to send the login")
    return token


def tls_options(cfg: UploadConfig) -> tuple[bool | str, str | tuple[str, str] | None]:
    """requests' `verify` and `cert` for upload.*: the server's trust and the client's certificate, one
    rule for the uploader and `check`. Raises CredentialError when the client's private key is not private."""
    if cfg.key_file:
        require_private(Path(cfg.key_file), "upload TLS key")
    verify: bool | str = (cfg.ca_file or True) if cfg.verify_tls else False
    cert = (cfg.cert_file, cfg.key_file) if cfg.cert_file and cfg.key_file else cfg.cert_file
    return verify, cert


def _systemd_credential(path: Path) -> bool:
    """A file systemd handed over in $CREDENTIALS_DIRECTORY (LoadCredential=, SetCredential=)."""
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if not creds:
        return False
    try:
        return Path(creds).resolve() in path.resolve().parents
    except OSError:
        return False


def _not_private(path: Path, st: os.stat_result, what: str) -> CredentialError | None:
    """Why the secret file is not private (one line, with the command that makes it so), or None."""
    me = os.geteuid()
    quoted = shlex.quote(str(path))
    if st.st_uid not in (0, me):
        fix = f"sudo chown {_user(me)} {quoted} && sudo chmod 600 {quoted}"
        allowed = f"{_user(me)} (the user the agent runs as)" + (" or root" if me else "")
        return CredentialError(f"{what} file {path} belongs to {_user(st.st_uid)}, not to {allowed}, so "
                               f"{_user(st.st_uid)} can change or read it: run `{fix}`", fix)
    if st.st_mode & 0o777 & ~(stat.S_IRWXU | _GROUP_READ):
        mode = f"{st.st_mode & 0o777:04o}"
        if st.st_uid == me:
            fix = f"chmod 600 {quoted}"
        else:  # root's file, read by the agent's user through the file's group
            fix = f"sudo chgrp {_group(os.getegid())} {quoted} && sudo chmod 640 {quoted}"
        who = ("every user of this machine can " + ("read" if st.st_mode & stat.S_IROTH else "get at")
               if st.st_mode & stat.S_IRWXO else "its group can change")
        return CredentialError(f"{what} file {path} has mode {mode}: {who} it; a secret file must be 0600 or "
                               f"0640: run `{fix}`", fix)
    return None


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
