"""Helpers shared by the sub-command modules: the --config option and loading it or exiting 78, and
Ctrl-C / SIGTERM as a requested stop."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable

from edge_agent.config import EXIT_CONFIG, Config, ConfigError, load_config
from edge_agent.service.instances import instance_state_dir

# Where the systemd unit's ConfigurationDirectory= puts the file; used when --config is not given
# and the file exists, so `edge-agent check` on a device needs no arguments.
SYSTEM_CONFIG = "/etc/edge-agent/config.yaml"


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c", "--config", metavar="FILE",
        help=f"YAML config (default: $EDGE_AGENT_CONFIG, else {SYSTEM_CONFIG} if present, "
        "else built-in defaults)")


def config_path(args: argparse.Namespace) -> str | None:
    path = getattr(args, "config", None) or os.environ.get("EDGE_AGENT_CONFIG")
    if path:
        return path
    return SYSTEM_CONFIG if os.path.exists(SYSTEM_CONFIG) else None


def load_config_or_exit(args: argparse.Namespace, *, strict_source: bool = True) -> Config:
    """Load the config named by args, or print located errors to stderr and exit 78 (EX_CONFIG)."""
    path = config_path(args)
    state = instance_state_dir(path)
    if state is not None and "STATE_DIRECTORY" not in os.environ:  # run by hand, not by edge-agent@NAME
        os.environ["STATE_DIRECTORY"] = str(state)  # so spool.dir's default is that camera's spool
    try:
        return load_config(path, strict_source=strict_source)
    except ConfigError as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def stop_on_signals(stop: threading.Event | None = None, then: Callable[[], None] | None = None) -> threading.Event:
    """Ctrl-C and SIGTERM set `stop` (and call `then`, e.g. to end a source's read): the command ends its
    work, reports what it did and exits 0, a requested stop. Not a KeyboardInterrupt: raised inside
    PyAV's read of a pipe, that is swallowed there. Installed even where SIGINT was ignored at start
    (a background job), as the stop its caller asks for."""
    stop = stop or threading.Event()

    def on_stop(_signum: int, _frame: object) -> None:
        stop.set()
        if then is not None:
            then()

    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGTERM, on_stop)
    return stop
