"""A command imports only its own module: `edge-agent spool status` does not pay for OpenCV, PyAV or the
web server at start-up, and the command table the one-module path uses names every command."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from edge_agent import cli


def commands_of(parser: argparse.ArgumentParser) -> set[str]:
    return {name for a in parser._actions if isinstance(a, argparse._SubParsersAction) for name in a.choices}


def test_the_command_table_names_every_command_and_each_module_registers_its_own() -> None:
    assert commands_of(cli.build_parser()) == set(cli.COMMANDS)
    for command in cli.COMMANDS:
        assert command in commands_of(cli.build_parser(command)), f"{cli.COMMANDS[command]} lacks {command}"


@pytest.mark.parametrize("argv,command", [
    (["spool", "status"], "spool"),
    (["--debug", "config", "validate", "x.yaml"], "config"),
    (["tune", "--help"], "tune"),
    (["spol", "status"], None),  # a typo: every command, so the error lists them
    ([], None),
])
def test_the_first_word_that_is_not_an_option_names_the_command(argv: list[str], command: str | None) -> None:
    assert cli.command_in(argv) == command


@pytest.mark.parametrize("command", ["spool", "config", "noreads", "receiver"])
def test_a_queue_or_config_command_starts_without_opencv_pyav_or_the_web_server(command: str) -> None:
    heavy = ("av", "cv2", "zxingcpp", "fastapi", "uvicorn")
    code = (f"import sys; from edge_agent import cli; cli.build_parser(cli.command_in({[command]!r}))\n"
            f"print(' '.join(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "", f"`edge-agent {command}` imports {out.strip()} before it runs"
