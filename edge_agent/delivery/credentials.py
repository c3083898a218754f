"""The bearer token for uploads: from a file, or from systemd's credentials.

With `LoadCredential=upload-token:/etc/edge-agent/upload-token` in the unit, systemd hands the
service a private copy readable only by it, under $CREDENTIALS_DIRECTORY. Errors name the file,
never its content; the token itself is never logged.
"""

from __future__ import annotations

import os
from pathlib import Path

from edge_agent.config import UploadConfig

CREDENTIAL_NAME = "upload-token"


class CredentialError(Exception):
    pass


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


def read_secret(path: Path, what: str) -> str:
    """One printable line without spaces; errors name the file, never the content."""
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
    path = token_path(cfg)
    return None if path is None else read_secret(path, "upload token")
