"""`edge-agent config validate|show|schema|reference`: a config that explains itself."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from edge_agent import const
from edge_agent.commands.common import add_config_arg, config_path, load_config_or_exit
from edge_agent.config import (
    ENV_PREFIX,
    EXIT_CONFIG,
    Config,
    ConfigError,
    config_sha256,
    config_sources,
    fragment_dir,
    fragments,
    load_config,
)
from edge_agent.config.pi_models import picamera2_warnings
from edge_agent.redact import redact_data


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="validate, show or describe the configuration",
                       description="Check a config file, show the effective config and where each value came "
                       "from, or print its schema and reference.")
    ss = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    v = ss.add_parser("validate", help="check a config file: exit 0, or 78 with file:line:column errors",
                      description="Check a config file and the fragments in its .d folder, merged as the agent "
                      "merges them, without starting anything: exit 0, or 78 with one "
                      "`file:line:column: key: problem` line per error.")
    v.add_argument("file", nargs="?", help="the YAML file (or --config)")
    add_config_arg(v)
    v.add_argument("--fragment", metavar="FILE",
                   help="check as if FILE were in the fragment folder (under --as NAME, else its own name), "
                   "before putting it there: for Ansible's `validate:` and the like")
    v.add_argument("--as", dest="fragment_name", metavar="NAME",
                   help="the name --fragment takes in the folder, which sets its place in the merge order")
    v.set_defaults(func=cmd_validate)
    s = ss.add_parser("show", help="the effective config, with where each value came from",
                      description="Print the config the agent would run with (file, its .d fragments, "
                      "environment, defaults merged), each value with where it came from (file:line, "
                      "env VAR or default) and the config's sha256 (edge_agent_info's config_sha256); "
                      "passwords in URLs and commands are masked.")
    add_config_arg(s)
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_show)
    sc = ss.add_parser("schema", help="JSON Schema of the config (for editors)",
                       description="Print the JSON Schema of the config file, for editors that check YAML.")
    sc.set_defaults(func=lambda _a: print(json.dumps(schema(), indent=2)) or 0)
    r = ss.add_parser("reference", help="print the key reference (Markdown); --out DIR writes it and the schema",
                      description="Print the reference of every config key (Markdown) generated from the code; "
                      "with --out DIR, write it as DIR/config-reference.md beside DIR/config.schema.json instead "
                      "(in a source tree: --out docs).")
    r.add_argument("--out", metavar="DIR", help="write config-reference.md and config.schema.json into DIR "
                   "(default: print the reference to stdout, write nothing)")
    r.set_defaults(func=cmd_reference)


def cmd_validate(args: argparse.Namespace) -> int:
    path = args.file or config_path(args)
    if not path:
        print("edge-agent config validate: give a FILE", file=sys.stderr)
        return 64
    extra = {}
    if args.fragment:
        name = args.fragment_name or Path(args.fragment).name
        if not name.endswith(".yaml") or "/" in name or name.startswith("."):
            print(f"edge-agent config validate: --as {name}: a fragment is a NAME.yaml in "
                  f"{fragment_dir(path)}/ (other names are not read)", file=sys.stderr)
            return 64
        extra[name] = Path(args.fragment)
    elif args.fragment_name:
        print("edge-agent config validate: --as goes with --fragment FILE", file=sys.stderr)
        return 64
    try:
        cfg = load_config(path, strict_source=False, extra=extra)
        merged = len(fragments(path)) + len(extra)
        what = f"{path} + {merged} fragment{'s' if merged != 1 else ''}" if merged else path
        if cfg.source.kind == "file" and not cfg.source.path:
            _warn_encoders(cfg.clip.encoders)
            print(f"ok: {what} (no source.path: fine for `edge-agent replay VIDEO`; `run` needs one)")
            return 0
        load_config(path, extra=extra)
    except ConfigError as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        return EXIT_CONFIG
    _warn_encoders(cfg.clip.encoders)
    if cfg.source.kind == "picamera2":  # valid, but costly on this Pi, or not checkable on this machine
        p = cfg.source.picamera2
        for note in picamera2_warnings(p.model, p.width, p.height, cfg.source.fps):
            print(f"warning: {note}", file=sys.stderr)
    print(f"ok: {what}")
    return 0


def _warn_encoders(names: list[str]) -> None:
    """Valid, but may be meant for another device (h264_nvenc on a Jetson): a warning, not an error."""
    from edge_agent.capture.encoders import none_usable

    warning = none_usable(names)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)


def cmd_show(args: argparse.Namespace) -> int:
    cfg = load_config_or_exit(args, strict_source=False)
    path = config_path(args)
    where = config_sources(path)
    data = redact_data(cfg.model_dump(mode="json"))  # never a password on a terminal or in a ticket
    digest = config_sha256(cfg)
    if args.json:
        print(json.dumps({"config": data, "sources": where, "config_sha256": digest,
                          "fragments": [str(f) for f in fragments(path)] if path else []}, indent=2))
        return 0
    if path:
        parts = [str(f) for f in fragments(path)]
        print(f"# {path}" + (f" + {', '.join(parts)}" if parts else f" (no fragments in {fragment_dir(path)}/)"))
    print(f"# config_sha256: {digest}")
    for section, value in data.items():
        if isinstance(value, dict):
            print(f"{section}:")
            for key, v in value.items():
                dotted = f"{section}.{key}"
                src = where.get(dotted) or where.get(section) or "default"
                print(f"  {key}: {json.dumps(v)}  # {src}")
        else:
            print(f"{section}: {json.dumps(value)}  # {where.get(section, 'default')}")
    return 0


def schema() -> dict[str, Any]:
    s = Config.model_json_schema()
    s["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    s["title"] = "edge-agent configuration"
    return s


def _rows(model: type[BaseModel], prefix: str) -> list[tuple[str, ...]]:
    rows = []
    for name, f in model.model_fields.items():
        ann = f.annotation
        sub = next((a for a in (getattr(ann, "__args__", ()) or (ann,)) if isinstance(a, type)
                    and issubclass(a, BaseModel)), None)
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        if sub is not None and not extra:
            rows += _rows(sub, f"{prefix}{name}.")
            continue
        default = f.get_default(call_default_factory=True) if not f.is_required() else "(required)"
        if name == "device_id":
            default = "(host name)"
        elif name == "dir" and prefix == "spool.":
            default = ("$STATE_DIRECTORY/spool, else /var/lib/edge-agent/spool if it exists or the user is "
                       "edge-agent, else ~/.local/state/edge-agent/spool")
        rng = ", ".join(f"{sym} {getattr(m, k)}" for m in f.metadata for k, sym in
                        (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")) if getattr(m, k, None) is not None)
        type_name = re.sub(r"typing\.|<class '|'>|\b(?:[a-z_]+\.)+(?=[A-Z])", "", str(ann)).replace("NoneType", "null")
        rows.append((f"`{prefix}{name}`", f"`{type_name}`".replace("|", "\\|"), f"`{json.dumps(default, default=str)}`",
                     rng or "", str(extra.get("reload", "live")), (f.description or "").replace("|", "\\|")))
    return rows


def reference_markdown() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from the schema in `edge_agent/config/schema.py` by `edge-agent config reference --out docs`;",
        "a test fails when it is stale. Units are in the key names (`_s` seconds, `_bytes`, `_px` pixels,",
        "`_hz` per second).",
        "`live` keys apply on reload (SIGHUP, `systemctl reload edge-agent`, or saving the file) without",
        "dropping a frame; `restart` keys restart the source inside the process (source.*) or need a",
        "service restart (the rest).",
        "",
        f"Any key can be set from the environment: `{ENV_PREFIX}SECTION__KEY=value`, e.g.",
        f"`{ENV_PREFIX}UPLOAD__URL=http://edge:8000/cid` or `{ENV_PREFIX}DEVICE_ID=line-3`; values are YAML",
        "scalars and override the file and its fragments. Fragments are the `*.yaml` files in the folder named",
        "after the config file with `.d` (`/etc/edge-agent/config.d/` for `/etc/edge-agent/config.yaml`), merged",
        "over it in name order (mappings key by key, a later file wins). `edge-agent config show` prints where",
        "each value came from.",
        "",
        "| key | type | default | range | reload | description |",
        "|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in _rows(Config, "")]
    return "\n".join(lines) + "\n"


def cmd_reference(args: argparse.Namespace) -> int:
    """Without --out, stdout: an installed package has no docs/ of its own to write into, and its
    site-packages is nobody's place for files."""
    if not args.out:
        sys.stdout.write(reference_markdown())
        return 0
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config-reference.md").write_text(reference_markdown(), encoding="utf-8")
        (out / "config.schema.json").write_text(json.dumps(schema(), indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename and str(exc.filename) != str(out) else ""
        print(f"edge-agent config reference: cannot write into --out {out}: {exc.strerror or exc}{where} (give "
              "--out a folder you can write, or leave it out to print the reference)", file=sys.stderr)
        return const.EXIT_CANTCREAT
    print(f"wrote {out / 'config-reference.md'} and {out / 'config.schema.json'}")
    return 0
