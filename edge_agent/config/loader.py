"""Reading a config: YAML text plus EDGE_AGENT__* environment overrides, validated against the
schema, every problem located (config/yaml_errors.py); and where each key's value came from."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from edge_agent.config.schema import ENV_PREFIX, Config, ConfigError
from edge_agent.config.yaml_errors import (
    duplicate_keys,
    format_errors,
    node_at,
    syntax_error,
    text_as_written,
    wants_text,
)


def env_overrides(env: Mapping[str, str] | None = None) -> dict[tuple[str, ...], tuple[str, Any]]:
    """`EDGE_AGENT__UPLOAD__URL=http://...` -> {("upload", "url"): ("EDGE_AGENT__UPLOAD__URL", value)}.

    Deployment knobs (server URL, device id, spool folder) differ per device while the YAML is
    shared across a fleet; values are YAML scalars, so `true`, `2.5` and `[a, b]` keep their types.
    """
    env = os.environ if env is None else env
    out: dict[tuple[str, ...], tuple[str, Any]] = {}
    for var, raw in env.items():
        if not var.startswith(ENV_PREFIX) or var == ENV_PREFIX:
            continue
        path = tuple(part.lower() for part in var[len(ENV_PREFIX):].split("__"))
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        if value is not None and not isinstance(value, str | dict | list) and wants_text(path):
            value = raw.strip()  # a text key takes the text as given: DEVICE_ID=0042 is "0042", not 34
        out[path] = (var, value)
    return out


def _apply_env(data: dict[str, Any], overrides: dict[tuple[str, ...], tuple[str, Any]]) -> None:
    for path, (_var, value) in overrides.items():
        node = data
        for part in path[:-1]:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = {}
                node[part] = nxt
            node = nxt
        node[path[-1]] = value


def parse_config(text: str, filename: str = "<config>", *, strict_source: bool = True,
                 env: Mapping[str, str] | None = None) -> Config:
    """Parse and validate YAML text plus EDGE_AGENT__* environment overrides; raise ConfigError
    with located messages (`file:line:column` for the file, the variable's name for the environment).

    `strict_source=False` is for `replay`, which takes the video from the command line.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([syntax_error(exc, text, filename)]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([f"{filename}: YAML error: {exc}"]) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        if isinstance(root, yaml.ScalarNode) and root.style is None and isinstance(data, str) and data.split():
            m = root.start_mark
            raise ConfigError([f"{filename}:{m.line + 1}:{m.column + 1}: line {m.line + 1} has no ':' after "
                               f"'{data.split()[0]}' (a key needs 'key: value')"])
        raise ConfigError([f"{filename}:1:1: (top level): expected a mapping of keys, got {type(data).__name__}"])
    duplicates = duplicate_keys(root, filename)
    if duplicates:
        raise ConfigError(duplicates)
    text_as_written(root, data)
    overrides = env_overrides(env)
    _apply_env(data, overrides)
    try:
        cfg = Config.model_validate(data)
        if strict_source:
            _check_source(cfg)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, root, filename, overrides)) from exc
    except ValueError as exc:
        node, _ = node_at(root, ("source",))
        m = node.start_mark if node is not None else None
        where = f"{filename}:{m.line + 1}:{m.column + 1}" if m else filename
        raise ConfigError([f"{where}: {exc}"]) from exc
    return cfg


def _check_source(cfg: Config) -> None:
    s = cfg.source
    if s.kind in ("file", "v4l2", "url") and not s.path:
        raise ValueError(f"source.path: required for source.kind {s.kind}")
    if s.kind == "pipe" and not s.command:
        raise ValueError("source.command: required for source.kind pipe")


def load_config(path: str | os.PathLike[str] | None, *, strict_source: bool = True,
                env: Mapping[str, str] | None = None) -> Config:
    """Load a config file (plus environment overrides); None gives the embedded defaults."""
    if path is None:
        return parse_config("", "<defaults>", strict_source=False, env=env)
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read config: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{p}: not UTF-8 text: {exc}"]) from exc
    return parse_config(text, str(p), strict_source=strict_source, env=env)


def provenance(text: str, filename: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Where each key set by the file or the environment came from: `file:line` or `env VAR`.
    Keys absent from both are defaults."""
    out: dict[str, str] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = f"{prefix}{k.value}"
                if isinstance(v, yaml.MappingNode) and prefix.count(".") < 1:
                    walk(v, key + ".")
                else:
                    out[key] = f"{filename}:{k.start_mark.line + 1}"

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        root = None
    if root is not None:
        walk(root, "")
    for path, (var, _v) in env_overrides(env).items():
        out[".".join(path)] = f"env {var}"
    return out
