"""`edge-agent config validate|show|schema|reference`: a config that explains itself."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from edge_agent.commands.common import add_config_arg, config_path, load_config_or_exit
from edge_agent.config import ENV_PREFIX, EXIT_CONFIG, Config, ConfigError, load_config, provenance
from edge_agent.redact import redact_data

DOCS = Path(__file__).resolve().parents[2] / "docs"  # the source tree: edge_agent/commands/ -> root


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="validate, show or describe the configuration",
                       description="Check a config file, show the effective config and where each value came "
                       "from, or print its schema and reference.")
    ss = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    v = ss.add_parser("validate", help="check a config file: exit 0, or 78 with file:line:column errors",
                      description="Check a config file without starting anything: exit 0, or 78 with one "
                      "`file:line:column: key: problem` line per error.")
    v.add_argument("file", nargs="?", help="the YAML file (or --config)")
    add_config_arg(v)
    v.set_defaults(func=cmd_validate)
    s = ss.add_parser("show", help="the effective config, with where each value came from",
                      description="Print the config the agent would run with (file, environment, defaults "
                      "merged), each value with where it came from; passwords in URLs and commands are masked.")
    add_config_arg(s)
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_show)
    sc = ss.add_parser("schema", help="JSON Schema of the config (for editors)",
                       description="Print the JSON Schema of the config file, for editors that check YAML.")
    sc.set_defaults(func=lambda _a: print(json.dumps(schema(), indent=2)) or 0)
    r = ss.add_parser("reference", help="write docs/config-reference.md and docs/config.schema.json",
                      description="Regenerate the key reference (docs/config-reference.md) and the schema "
                      "(docs/config.schema.json) from the code.")
    r.add_argument("--out", default=str(DOCS), help="folder (default: docs/ of the source tree)")
    r.set_defaults(func=cmd_reference)


def cmd_validate(args: argparse.Namespace) -> int:
    path = args.file or config_path(args)
    if not path:
        print("edge-agent config validate: give a FILE", file=sys.stderr)
        return 64
    try:
        cfg = load_config(path, strict_source=False)
        if cfg.source.kind == "file" and not cfg.source.path:
            print(f"ok: {path} (no source.path: fine for `edge-agent replay VIDEO`; `run` needs one)")
            return 0
        load_config(path)
    except ConfigError as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        return EXIT_CONFIG
    print(f"ok: {path}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    cfg = load_config_or_exit(args, strict_source=False)
    path = config_path(args)
    text = Path(path).read_text(encoding="utf-8") if path else ""
    where = provenance(text, path or "<none>")
    data = redact_data(cfg.model_dump(mode="json"))  # never a password on a terminal or in a ticket
    if args.json:
        print(json.dumps({"config": data, "sources": where}, indent=2))
        return 0
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
            default = ("$STATE_DIRECTORY/spool, else /var/lib/edge-agent/spool if it exists, "
                       "else ~/.local/state/edge-agent/spool")
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
        "Generated from the schema in `edge_agent/config/schema.py` by `edge-agent config reference`; a test fails",
        "when it is stale. Units are in the key names (`_s` seconds, `_bytes`, `_px` pixels, `_hz` per second).",
        "`live` keys apply on reload (SIGHUP, `systemctl reload edge-agent`, or saving the file) without",
        "dropping a frame; `restart` keys restart the source inside the process (source.*) or need a",
        "service restart (the rest).",
        "",
        f"Any key can be set from the environment: `{ENV_PREFIX}SECTION__KEY=value`, e.g.",
        f"`{ENV_PREFIX}UPLOAD__URL=http://edge:8000/cid` or `{ENV_PREFIX}DEVICE_ID=line-3`; values are YAML",
        "scalars and override the file. `edge-agent config show` prints where each value came from.",
        "",
        "| key | type | default | range | reload | description |",
        "|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in _rows(Config, "")]
    return "\n".join(lines) + "\n"


def cmd_reference(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config-reference.md").write_text(reference_markdown(), encoding="utf-8")
    (out / "config.schema.json").write_text(json.dumps(schema(), indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out / 'config-reference.md'} and {out / 'config.schema.json'}")
    return 0
