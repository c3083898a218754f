"""Bounds on a config document before it is built: its size, its nesting, and how far its aliases expand.

YAML aliases let ten lines stand for a billion values (`b: [*a, *a, ...]` nested ten deep): PyYAML
builds them as shared objects, but merging, validating or showing the config walks every copy, and a
reload on the device would take its memory (a gigabyte in seconds). A recursive alias (`a: &a [*a]`)
or nesting thousands deep exhausts Python's recursion instead. None of it belongs in a config, whose
sections are at most four levels deep and a few hundred values long, so the document's event stream
(read without building anything) is measured first: values counted as the aliases would expand them,
and the first one past a bound is refused at its file, line and column.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

# A config file is a few kilobytes; a fleet's fragment a few more.
MAX_BYTES = 1 << 20
# Sections nest four levels at most (source.options.<name>, a list of mappings in a fragment): room to spare.
MAX_DEPTH = 32
# Every scalar, list and mapping, counted as often as aliases repeat it; a full config has a few hundred.
MAX_NODES = 10_000


class TooBig(Exception):
    """A document past a bound, said as `where: problem (the bound and what to do)`."""


def check_document(text: str, where: str) -> None:
    """Raise TooBig when `text` (from `where`, a file name or an environment variable's) is past a bound.

    Syntax errors are left to the parse that follows, which says them in a technician's words: the
    scan stops at the first one."""
    if len(text) > MAX_BYTES:
        raise TooBig(f"{where}: {len(text)} characters, more than a config may have ({_mib(MAX_BYTES)}): "
                     "is it the right file?")
    expanded: dict[str, int] = {}  # anchor -> values it stands for (a scalar 1, a collection all of its)
    open_: list[tuple[str | None, int]] = []  # the collections being read: their anchor, the count at their start
    count = 0
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                if event.anchor not in expanded:
                    if any(anchor == event.anchor for anchor, _ in open_):
                        raise TooBig(f"{_at(where, event)}: alias *{event.anchor} repeats the collection it is in "
                                     "(a recursive alias, which never ends): write the values out")
                    continue  # an undefined alias: the parse says so
                count += expanded[event.anchor]
            elif isinstance(event, yaml.ScalarEvent):
                count += 1
                if event.anchor:
                    expanded[event.anchor] = 1
            elif isinstance(event, yaml.CollectionStartEvent):
                count += 1
                open_.append((event.anchor, count))
                if len(open_) > MAX_DEPTH:
                    raise TooBig(f"{_at(where, event)}: nested more than {MAX_DEPTH} levels deep (a config's "
                                 "sections are at most four): is it the right file?")
            elif isinstance(event, yaml.CollectionEndEvent):
                anchor, start = open_.pop()
                if anchor:
                    expanded[anchor] = count - start + 1
            if count > MAX_NODES:
                raise TooBig(f"{_at(where, event)}: the document stands for more than {MAX_NODES} values here "
                             f"(aliases expanded): a config has a few hundred; write the values out, or use "
                             "fewer aliases")
    except yaml.YAMLError:
        return


def read_text(path: Path) -> str:
    """A config file's text, read no further than the bound (`/dev/zero` named by mistake never ends);
    OSError and UnicodeDecodeError as reading raises them, TooBig past the bound."""
    with open(path, "rb") as f:
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise TooBig(f"{path}: larger than a config may be ({_mib(MAX_BYTES)}): is it the right file?")
    return data.decode("utf-8")


def regular_file_problem(path: Path) -> str | None:
    """Why a fragment's entry cannot be read as a file of config (a folder, a dangling link, a device);
    None for a regular file, or a link to one."""
    try:
        if path.is_file():
            return None
        if path.is_dir():
            return "a folder, not a file (only files named *.yaml are config fragments): move it out of the folder"
        if path.is_symlink() and not path.exists():
            return (f"a symbolic link to {os.readlink(path)}, which does not exist: restore its target, or "
                    "remove the link")
    except OSError as exc:
        return exc.strerror or str(exc)
    return "not a regular file (a device, a pipe or a socket): only files are config fragments"


def _at(where: str, event: yaml.Event) -> str:
    m = event.start_mark
    return f"{where}:{m.line + 1}:{m.column + 1}" if m is not None else where


def _mib(n: int) -> str:
    return f"{n / (1 << 20):g} MiB"
