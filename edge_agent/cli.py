"""`edge-agent` command line: thin on purpose. Each sub-command module registers its own parser
and handler; this module only assembles them and maps exceptions to exit codes."""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

# Modules with a `register(subparsers)` function, in the order their commands appear in --help.
COMMAND_MODULES = (
    "edge_agent.replay_cli",
    "edge_agent.daemon",
    "edge_agent.check",
    "edge_agent.snapshot",
    "edge_agent.config_cli",
    "edge_agent.spool_cli",
    "edge_agent.receiver.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="Read QR-coded CIDs from a camera, cut a video clip around each, deliver both.")
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `edge-agent ... | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
