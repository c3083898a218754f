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


def token_path(cfg: UploadConfig) -> Path | None:
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if cfg.token_file:
        p = Path(cfg.token_file)
        # a bare name refers to a systemd credential when one by that name exists
        if creds and os.sep not in cfg.token_file and (Path(creds) / cfg.token_file).is_file():
            return Path(creds) / cfg.token_file
        return p
    if creds and (Path(creds) / CREDENTIAL_NAME).is_file():
        return Path(creds) / CREDENTIAL_NAME
    return None


def load_token(cfg: UploadConfig) -> str | None:
    path = token_path(cfg)
    if path is None:
        return None
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise CredentialError(f"cannot read upload token file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CredentialError(f"upload token file {path} is not text") from None
    if not token or any(c.isspace() for c in token) or not token.isprintable():
        raise CredentialError(f"upload token file {path} must hold one token on one line")
    return token
