"""Several cameras on one device: one `edge-agent@NAME.service` per camera, each reading
/etc/edge-agent/NAME.yaml (`/etc/edge-agent/config.yaml` belongs to the single `edge-agent.service`).

Instances run side by side, so they must not share what only one process may own: the spool
(a starting instance's recovery removes the other's half-written clips, and two uploaders on
one queue can send a clip twice), the http port (the second one runs without its web server) and
the device_id (the server could not tell the cameras apart). This module works out what each
config in a folder would get *as its service would run it* (the unit's StateDirectory=, its
EnvironmentFile=) and names the clashes, for the WARN line of `edge-agent check`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from edge_agent.config import ConfigError, config_sources, load_config

# ConfigurationDirectory=edge-agent and StateDirectory=edge-agent[/%i] of the units in systemd/
CONFIG_DIR = Path("/etc/edge-agent")
STATE_ROOT = Path("/var/lib")
SINGLE_STEM = "config"  # /etc/edge-agent/config.yaml is edge-agent.service's
SINGLE_ENV = "edge-agent.env"
WILDCARD_HOSTS = {"", "0.0.0.0", "::", "*"}


@dataclass(frozen=True)
class Instance:
    """What one config file gets when its unit runs it."""

    path: Path
    unit: str
    device_id: str
    spool_dir: Path
    metrics_host: str
    metrics_port: int | None


def unit_name(path: Path) -> str:
    return "edge-agent.service" if path.stem == SINGLE_STEM else f"edge-agent@{path.stem}.service"


def state_dir(path: Path, state_root: Path = STATE_ROOT) -> Path:
    """$STATE_DIRECTORY of the unit that reads `path`: StateDirectory=edge-agent or edge-agent/%i."""
    base = state_root / "edge-agent"
    return base if path.stem == SINGLE_STEM else base / path.stem


def env_file(path: Path) -> Path:
    """The unit's optional EnvironmentFile= beside the config."""
    return path.with_name(SINGLE_ENV) if path.stem == SINGLE_STEM else path.with_suffix(".env")


def instance_state_dir(path: str | os.PathLike[str] | None) -> Path | None:
    """For a hand-run command (`check`, `spool status`) on /etc/edge-agent/NAME.yaml: the state
    directory edge-agent@NAME.service has, so the command looks at that camera's spool and not
    at the single unit's. None for any other file, including the single unit's config.yaml."""
    if path is None:
        return None
    p = Path(path)
    if p.suffix != ".yaml" or p.stem == SINGLE_STEM or p.parent.resolve() != CONFIG_DIR.resolve():
        return None
    return state_dir(p, STATE_ROOT)


def read_env_file(path: Path) -> dict[str, str]:
    """systemd's EnvironmentFile= format, the part people write: KEY=VALUE lines, # and ; comments,
    values optionally in single or double quotes. A missing file is empty (the unit's leading '-')."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key.strip()] = value
    return out


def load_instance(path: Path, state_root: Path = STATE_ROOT) -> Instance:
    """Load `path` with its unit's environment file (not this shell's environment) and the spool
    directory the unit would give it; raises ConfigError like load_config."""
    env = read_env_file(env_file(path))
    cfg = load_config(path, strict_source=False, env=env)
    explicit = "spool.dir" in config_sources(path, env)
    spool = Path(cfg.spool.dir) if explicit else state_dir(path, state_root) / "spool"
    return Instance(path, unit_name(path), cfg.device_id, Path(os.path.normpath(spool)), cfg.http.host,
                    cfg.http.port)


def siblings(path: Path, state_root: Path = STATE_ROOT) -> list[Instance]:
    """Every *.yaml beside `path` that loads, `path` first. A sibling that does not load is left
    out: its own `check` reports it, and it cannot run to clash with anything."""
    path = Path(path)
    out = []
    for p in [path, *sorted(q for q in path.parent.glob("*.yaml") if q.name != path.name)]:
        try:
            out.append(load_instance(p, state_root))
        except (ConfigError, OSError, UnicodeDecodeError):
            continue
    return out


def _same_socket(a: Instance, b: Instance) -> bool:
    if a.metrics_port is None or a.metrics_port != b.metrics_port:
        return False
    return a.metrics_host == b.metrics_host or {a.metrics_host, b.metrics_host} & WILDCARD_HOSTS != set()


def clashes(path: Path, state_root: Path = STATE_ROOT) -> list[tuple[str, str, str]]:
    """What the config at `path` shares with the other configs in its folder:
    (what, value, other file) with what one of "spool", "http port", "device_id"."""
    found = siblings(path, state_root)
    if not found or found[0].path != Path(path):
        return []  # the checked file itself does not load: `check` has said so already
    me, others = found[0], found[1:]
    out = []
    for o in others:
        if o.spool_dir == me.spool_dir:
            out.append(("spool", str(me.spool_dir), o.path.name))
        if _same_socket(me, o):
            out.append(("http port", str(me.metrics_port), o.path.name))
        if o.device_id == me.device_id:
            out.append(("device_id", me.device_id, o.path.name))
    return out


FIXES = {
    "spool": "no spool.dir (the unit gives each /var/lib/edge-agent/NAME/spool) or one of its own",
    "http port": "an http.port of its own (or none)",
    "device_id": "a device_id of its own (the server tells cameras apart by it)",
}


def clash_warning(path: str | os.PathLike[str] | None) -> tuple[str, str] | None:
    """(detail, hint) for `edge-agent check`, or None when nothing is shared."""
    if path is None:
        return None
    p = Path(path).absolute()
    found = clashes(p)
    if not found:
        return None
    detail = f"{p.name} ({unit_name(p)}) shares " + "; ".join(f"{what} {value} with {other}"
                                                            for what, value, other in found)
    fixes = [fix for what, fix in FIXES.items() if any(w == what for w, _v, _o in found)]
    return detail, f"two cameras on one device cannot share these: give each config in {p.parent} " + \
        "; ".join(fixes)
