"""`edge-agent` command line: thin on purpose. Each sub-command module registers its own parser
and handler; this module only assembles them and maps exceptions to exit codes."""

from __future__ import annotations

import argparse
import ctypes
import importlib
import os
import sys

from edge_agent import __version__

# Modules with a `register(subparsers)` function, in the order their commands appear in --help.
COMMAND_MODULES = (
    "edge_agent.commands.replay",
    "edge_agent.commands.run",
    "edge_agent.commands.check",
    "edge_agent.commands.snapshot",
    "edge_agent.commands.config",
    "edge_agent.commands.spool",
    "edge_agent.commands.noreads",
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


def limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each thread that allocates its own malloc arena (up to 8 per core), and the
    pipeline's threads, FFmpeg's and libx264's each grow one: measured on 1080p30 with clips
    re-encoded, peak RSS fell from 295 MB to 218 MB with two arenas, at no measurable speed cost.
    Same effect as MALLOC_ARENA_MAX=2; an explicit MALLOC_ARENA_MAX in the environment wins."""
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc (musl, ...): nothing to tune


def main(argv: list[str] | None = None) -> int:
    limit_malloc_arenas()
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
