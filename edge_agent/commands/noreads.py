"""`edge-agent noreads`: the codes the agent saw but could not read, newest last, with their images.

Each entry is a located QR symbol that no decoder read, with no read of a code near it within the
cooldown: a torn, smeared or glaring label. The images (the frame around the symbol, its outline
drawn) sit in `noreads.dir`, by default beside the spool; the folder is bounded by
`noreads.max_files` and `noreads.max_bytes`, so old ones go by themselves.
"""

from __future__ import annotations

import argparse
import json
import sys

from edge_agent.commands.common import add_config_arg, load_config_or_exit
from edge_agent.commands.ownership import act_as_state_owner
from edge_agent.logs import setup_logging


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("noreads", help="list the codes seen but not read, with their images",
                       description="List no-reads: QR symbols located in the video that no decoder could read. "
                       "Look at the images to see why (damage, blur, glare, focus).")
    add_config_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--clear", action="store_true", help="delete the kept images (after looking at them)")
    p.set_defaults(func=cmd_noreads)


def cmd_noreads(args: argparse.Namespace) -> int:
    from edge_agent.pipeline.noreads import noreads_dir, store_for

    cfg = load_config_or_exit(args, strict_source=False)
    folder = noreads_dir(cfg)
    act_as_state_owner("noreads", [folder], refuse=args.clear)  # only --clear changes the folder
    setup_logging("WARNING")
    store = store_for(cfg)
    if folder.exists() and not folder.is_dir():
        print(f"edge-agent noreads: {folder} is not a folder; set noreads.dir to a folder", file=sys.stderr)
        return 1
    if args.clear:
        try:
            n = store.clear()
        except OSError as exc:
            print(f"edge-agent noreads: cannot delete in {folder}: {exc}; run as the agent's user "
                  "(sudo -u edge-agent ...)", file=sys.stderr)
            return 1
        print(f"deleted {n} no-read image(s) from {folder}")
        return 0
    entries = store.entries()
    if args.json:
        print(json.dumps({"dir": str(folder), "noreads": [e.as_dict() for e in entries]}))
        return 0
    if not entries:
        print(f"no no-reads kept in {folder}")
        return 0
    print(f"{len(entries)} no-read(s) in {folder}, oldest first")
    print(f"{'AT (UTC)':<20}  {'VIDEO T':>8}  {'POSITION':<11}  {'SEEN':>4}  {'ERROR':<9}  IMAGE")
    for e in entries:
        xs, ys = [p[0] for p in e.polygon], [p[1] for p in e.polygon]
        pos = f"{(min(xs) + max(xs)) // 2},{(min(ys) + max(ys)) // 2}"
        print(f"{e.at:<20}  {e.t:8.2f}  {pos:<11}  {e.sightings:>4}  {e.error:<9}  {e.image}")
    return 0
