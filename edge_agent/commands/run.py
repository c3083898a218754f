"""`edge-agent run`: the daemon, as the systemd service starts it."""

from __future__ import annotations

import argparse
import logging

from edge_agent import const
from edge_agent.commands.common import add_config_arg, config_path, load_config_or_exit
from edge_agent.commands.ownership import act_as_state_owner
from edge_agent.logs import setup_logging
from edge_agent.service.daemon import Daemon

log = logging.getLogger("edge_agent.service.daemon")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the daemon (what the systemd service starts)",
                       description="Capture, detect, cut clips and deliver them until stopped (SIGTERM). "
                       "SIGHUP or an edit of the config file reloads it.")
    add_config_arg(p)
    p.add_argument("--no-watch", action="store_true",
                   help="reload only on SIGHUP (systemctl reload), not when the config file is saved "
                   "(default: both)")
    p.set_defaults(func=run_daemon)


def run_daemon(args: argparse.Namespace) -> int:
    from edge_agent.delivery.spool import SpoolBusy, SpoolError
    from edge_agent.pipeline.noreads import noreads_dir

    cfg = load_config_or_exit(args)
    act_as_state_owner("run", [cfg.spool.dir, noreads_dir(cfg)])  # root by hand: as the service's user
    setup_logging(cfg.log_level)
    try:
        return Daemon(cfg, config_path(args), watch=not args.no_watch).run()
    except SpoolBusy as busy:
        log.error("cannot start: %s; two agents (two cameras) need two spool.dir, and a running "
                  "`edge-agent spool flush` must finish first", busy)
        return const.EXIT_QUEUED
    except SpoolError as exc:
        log.error("cannot start: %s", exc)
        return const.EXIT_CANTCREAT


