"""Secrets out of everything the agent shows: logs, the web pages, the STATUS line, command output.

A camera URL carries its login (`rtsp://admin:CamPass123@10.0.0.7/stream`), and a pipe source's
command line may carry one too (`--password X`, `user-pw=X`, `RTSP_PASS=X`, `-u user:X`,
`Authorization: Basic ...`). `redact()` masks them in any text, wherever the text came from: the
configured value itself, or an FFmpeg or OS error that quotes it. It is applied where such text
leaves the process: the log formatter, the web server's JSON, and every command's output (the CLI
runs each command with stdout and stderr behind `RedactedStream`; JSON output is `redact_data`ed
first, which also masks secret-named keys); and where the agent makes a message out of a source
(`SourceError`, a source's `describe`), so a message copied into another message is already clean.

Masking keeps what helps a technician (the scheme, the user name, the host, the option's name) and
replaces only the secret with `***`. It errs on the side of masking: an option whose name merely
looks secret (`passthrough=1`) loses its value in messages, never a password its value.
"""

from __future__ import annotations

import contextlib
import re
import sys
import threading
from collections.abc import Iterator
from typing import Any

MASK = "***"

# scheme://userinfo@host: the user info runs to the last '@' before the path (a raw '@' in a
# password, which FFmpeg accepts, would otherwise leave the password's tail showing)
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s'\"<>]*)@")

# the name of an option or variable that holds a secret: a password, token, key or credential
_SECRET_NAME = (r"[A-Za-z0-9_.-]*(?:pass|pwd|secret|token|credential|api[-_]?key|access[-_]?key|private[-_]?key"
                r"|auth)[A-Za-z0-9_.-]*|[A-Za-z0-9_.-]*[-_.]pw")
_VALUE = r"(?:\"[^\"]*\"|'[^']*'|[^\s\"',;&]+)"
# NAME=value (env-style, GStreamer properties, query strings): PASS=x, user-pw=x, ?token=x
_ASSIGNED = re.compile(rf"(?P<name>(?<![A-Za-z0-9_.-])(?:{_SECRET_NAME}))(?P<sep>=)(?P<value>{_VALUE})",
                       re.IGNORECASE)
# --password value, -password value, --password=value
_OPTION = re.compile(rf"(?P<name>(?<!\S)--?(?:{_SECRET_NAME}))(?P<sep>\s+|=)(?P<value>(?!-){_VALUE})",
                     re.IGNORECASE)
# -u user:secret, --user user:secret (curl, wget, ffmpeg's -rtsp_user ... are covered above)
_USER_OPTION = re.compile(rf"(?P<name>(?<!\S)(?:-u|--user|--proxy-user))(?P<sep>\s+|=)(?P<user>[^\s:'\"]+):"
                          rf"(?P<value>{_VALUE})")
# an HTTP Authorization header written out: "Authorization: Basic dXNlcjpwYXNz"
_AUTH_HEADER = re.compile(r"(?P<name>\b(?:proxy-)?authorization\s*:\s*)(?P<scheme>[A-Za-z]+\s+)?(?P<value>[^\s\"',;]+)",
                          re.IGNORECASE)


def _userinfo(m: re.Match[str]) -> str:
    user, colon, _password = m["userinfo"].partition(":")
    # user:password keeps the user (which account) and masks the password; a lone user info may
    # itself be a token (https://TOKEN@host), so it is masked whole
    return f"{m['scheme']}{user}:{MASK}@" if colon else f"{m['scheme']}{MASK}@"


def redact(text: str) -> str:
    """`text` with URL logins and command-line secrets replaced by `***`."""
    if not text:
        return text
    text = _URL_USERINFO.sub(_userinfo, text)
    text = _AUTH_HEADER.sub(lambda m: f"{m['name']}{m['scheme'] or ''}{MASK}", text)
    text = _USER_OPTION.sub(lambda m: f"{m['name']}{m['sep']}{m['user']}:{MASK}", text)
    text = _OPTION.sub(lambda m: f"{m['name']}{m['sep']}{MASK}", text)
    return _ASSIGNED.sub(lambda m: f"{m['name']}{m['sep']}{MASK}", text)


_SECRET_KEY = re.compile(rf"(?:{_SECRET_NAME})", re.IGNORECASE)
# keys that name where a secret is kept, not the secret: showing the path helps, and costs nothing
_WHERE_SUFFIXES = ("_file", "_path", "_dir")


def secret_key(key: str) -> bool:
    """A mapping key whose string value is a secret (`password`, `rtsp_pass`; not `password_file`)."""
    return bool(_SECRET_KEY.fullmatch(key)) and not key.lower().endswith(_WHERE_SUFFIXES)


def redact_data(value: Any) -> Any:
    """`value` (JSON-ready data) with every string in it redacted, and the string value of every
    secret-named key masked whole (FFmpeg options such as `{"password": ...}`): for status pages
    and `config show`."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: MASK if isinstance(v, str) and isinstance(k, str) and secret_key(k) else redact_data(v)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(v) for v in value]
    return value


class RedactedStream:
    """A text stream (stdout, stderr) whose every line is `redact()`ed on its way out: one rule for
    whatever a command prints, its own lines, a library's, a warning's. A line is masked whole once
    it ends (or on `flush()`), so a secret printed in pieces (`print("--password", value)`) is masked
    as it would be in one piece. What is not text (`.buffer`) passes unmasked: nothing writes there."""

    def __init__(self, target: Any):
        self.target = target
        self._pending = ""
        self._lock = threading.Lock()  # the daemon's threads log through one stream

    def write(self, text: str) -> int:
        written = len(text)
        with self._lock:
            text = self._pending + text
            end = max(text.rfind("\n"), text.rfind("\r")) + 1  # tqdm redraws its bar after a '\r'
            self._pending = text[end:]
            if end:
                self.target.write(redact(text[:end]))
        return written

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, ""
            if pending:
                self.target.write(redact(pending))
        self.target.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, isatty, fileno, ... as the stream it wraps
        return getattr(self.target, name)


@contextlib.contextmanager
def redacted_output() -> Iterator[None]:
    """sys.stdout and sys.stderr masked for the duration (a command's run); as found afterwards."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = RedactedStream(saved[0]), RedactedStream(saved[1])
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a closed pipe (`| head`), a closed stream
                stream.flush()
        sys.stdout, sys.stderr = saved
