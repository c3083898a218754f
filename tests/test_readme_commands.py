"""The README's command table and config defaults say what the code does: every command, sub-action
and option of the CLI's own parser is in the table; every (sub-)command has a --help description; every
option with a default states it in its help; every default in the README's key table is the real one."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.cli import build_parser
from edge_agent.config import Config

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


def table_rows(text: str) -> list[list[str]]:
    rows = [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in text.splitlines()
            if line.startswith("|") and not line.startswith("|---")]
    return rows[1:]  # without the header


COMMAND_ROWS = table_rows(section("Commands"))


def sub_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return {name: p for a in parser._actions if isinstance(a, argparse._SubParsersAction)
            for name, p in a.choices.items()}


def options(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    for a in parser._actions:
        if not isinstance(a, argparse._HelpAction | argparse._VersionAction | argparse._SubParsersAction):
            yield a


def every_parser() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    todo = [("edge-agent", build_parser())]
    while todo:
        name, p = todo.pop(0)
        yield name, p
        todo += [(f"{name} {sub}", sp) for sub, sp in sub_actions(p).items()]


def mentions(text: str, token: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(token)}(?![\w-])", text) is not None


COMMANDS = sorted(sub_actions(build_parser()))


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_sub_action_and_option_is_in_the_readme_table(command: str) -> None:
    rows = [r for r in COMMAND_ROWS if re.search(rf"`edge-agent {command}(?![\w-])", r[0])]
    assert rows, f"README command table has no row for `edge-agent {command}`"
    syntax = " ".join(r[0] for r in rows)
    text = " ".join(" ".join(r) for r in rows)
    parser = sub_actions(build_parser())[command]
    missing = []
    for name, sub in [(None, parser), *sub_actions(parser).items()]:
        if name is not None and not mentions(syntax, name):
            missing.append(f"sub-action {name}")
        for a in options(sub):
            if a.option_strings and not any(mentions(syntax, o) for o in a.option_strings):
                missing.append("/".join(a.option_strings) + (f" (of {name})" if name else ""))
            elif not a.option_strings and a.choices:
                missing += [f"{a.dest} {c}" for c in a.choices if not mentions(text, str(c))]
    assert not missing, f"`edge-agent {command}` in README's command table lacks: {', '.join(missing)}"


@pytest.mark.parametrize("name,parser", list(every_parser()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_command_has_a_description(name: str, parser: argparse.ArgumentParser) -> None:
    assert (parser.description or "").strip(), f"`{name} --help` has no description"


def stated(default: object) -> str | None:
    """The text of a default that its help must show (None: the word `default` is enough, e.g. a path)."""
    if isinstance(default, bool):
        return None
    if isinstance(default, float):
        return f"{default:g}"
    if isinstance(default, int):
        return str(default)
    if isinstance(default, str) and "/" not in default:
        return default
    return None


@pytest.mark.parametrize("name,parser", list(every_parser()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_default_is_stated_in_the_help(name: str, parser: argparse.ArgumentParser) -> None:
    unsaid = []
    for a in options(parser):
        if a.default is None or a.default == argparse.SUPPRESS or a.nargs == 0:  # flags: off unless given
            continue
        helptext = a.help or ""
        value = stated(a.default)
        if "default" not in helptext or (value is not None and not mentions(helptext, value)):
            unsaid.append(f"{'/'.join(a.option_strings) or a.dest} (default {a.default!r}): help={helptext!r}")
    assert not unsaid, f"`{name}`: " + "; ".join(unsaid)


def readme_value(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def test_the_defaults_in_the_readme_key_table_are_the_real_ones() -> None:
    checked, wrong = 0, []
    for row in table_rows(section("Configuration")):
        keys = re.findall(r"`([a-z_]+(?:\.[a-z_]+)+)`", row[0])
        values = re.findall(r"`([^`]*)`", row[1])
        if not keys or len(keys) != len(values) or len(values) != row[1].count("`") // 2:
            continue  # a described default ("host name", a search path): not a single value
        for key, said in zip(keys, values, strict=True):
            real: object = Config()
            for part in key.split("."):
                real = getattr(real, part)
            checked += 1
            if readme_value(real) != said:
                wrong.append(f"{key}: README says {said}, the default is {readme_value(real)}")
    assert checked >= 10 and not wrong, wrong
