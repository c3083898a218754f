"""Reading a config: the main YAML file, the fragments in its `.d` folder merged over it in name
order, then EDGE_AGENT__* environment overrides, validated against the schema, every problem located
in the file that set the key (config/yaml_errors.py); and where each key's value came from.

Fragments are how a fleet is configured, as `telegraf.d` is: `/etc/edge-agent/config.yaml` stays the
device's own file (written once by the package, then the owner's), while `/etc/edge-agent/config.d/*.yaml`
holds what a configuration tool pushes, e.g. `10-fleet.yaml` for every device and `50-line3.yaml` for some.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
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
from edge_agent.config.yaml_limits import TooBig, check_document, read_text, regular_file_problem

# Only these are read from the fragment folder: an editor's backup (`10-fleet.yaml~`), a package
# manager's leftover (`.dpkg-old`) or a staged upload (`.new`) must never join the config.
FRAGMENT_SUFFIX = ".yaml"


def fragment_dir(path: str | os.PathLike[str]) -> Path:
    """The fragment folder of a config file: its name without `.yaml` plus `.d`, beside it
    (`/etc/edge-agent/config.yaml` -> `/etc/edge-agent/config.d`, `cam1.yaml` -> `cam1.d`)."""
    p = Path(path)
    return p.with_name(p.stem + ".d") if p.suffix in (".yaml", ".yml") else p.with_name(p.name + ".d")


def fragments(path: str | os.PathLike[str]) -> list[Path]:
    """The fragments merged over `path`, in the order they apply (byte order of their names, as
    `ls` in the C locale and telegraf sort them): later ones win. Hidden files are skipped.

    The name decides what is a fragment: an entry named *.yaml that is not a readable file (a folder,
    a link whose target is gone) is listed too, and refused when read, as an unreadable fragment is,
    so the device never runs a config other than the one written for it without a word."""
    folder = fragment_dir(path)
    try:
        names = sorted(e.name for e in os.scandir(folder)
                       if e.name.endswith(FRAGMENT_SUFFIX) and not e.name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise ConfigError([f"{folder}: cannot read the fragment folder: {exc.strerror or exc}"]) from exc
    return [folder / n for n in names]


@dataclass
class Layer:
    """One YAML document of the config: its file name (as errors show it), text and composed tree."""
    filename: str
    text: str
    root: yaml.Node | None
    data: dict[str, Any]


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
            check_document(raw, f"environment {var}")  # a value is YAML too: an alias bomb fits in one
        except TooBig as exc:
            raise ConfigError([str(exc)]) from None
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        if value is not None and not isinstance(value, str | dict | list) and wants_text(path):
            value = raw.strip()  # a text key takes the text as given: DEVICE_ID=0042 is "0042", not 34
        elif isinstance(value, str) and not raw.strip().isprintable() and wants_text(path):
            value = raw.strip()  # and keeps a newline in it: YAML would fold it into a space, unseen
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


def _merge(base: dict[str, Any], over: dict[str, Any]) -> None:
    """Deep-merge `over` into `base`: mappings merge key by key, anything else is replaced. A section
    left empty in a fragment (`clip:` with its keys commented out) keeps what it had."""
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        elif value is None and isinstance(base.get(key), dict):
            continue
        else:
            base[key] = value


def parse_layer(text: str, filename: str) -> Layer:
    """One YAML document, checked on its own: its bounds (size, depth, aliases), syntax, a mapping at
    the top, no key given twice."""
    try:
        check_document(text, filename)  # before anything is built from it
    except TooBig as exc:
        raise ConfigError([str(exc)]) from None
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
    return Layer(filename, text, root, data)


def parse_layers(layers: list[Layer], *, strict_source: bool = True,
                 env: Mapping[str, str] | None = None) -> Config:
    """Merge parsed layers in order, apply the environment, validate; each error names the file
    (and line) of the layer that set the key last."""
    data: dict[str, Any] = {}
    for layer in layers:
        _merge(data, _copy(layer.data))
    overrides = env_overrides(env)
    _apply_env(data, overrides)
    try:
        cfg = Config.model_validate(data)
        if strict_source:
            _check_source(cfg)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, [(la.filename, la.root) for la in layers], overrides)) from exc
    except ValueError as exc:
        filename, node = _setter(layers, ("source",))
        m = node.start_mark if node is not None else None
        where = f"{filename}:{m.line + 1}:{m.column + 1}" if m else filename
        raise ConfigError([f"{where}: {exc}"]) from exc
    return cfg


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _setter(layers: list[Layer], loc: tuple[str, ...]) -> tuple[str, yaml.Node | None]:
    """The last layer that sets `loc` (else the main file) and the node there."""
    for layer in reversed(layers):
        node, _ = node_at(layer.root, loc)
        if node is not None and node is not layer.root:
            return layer.filename, node
    first = layers[0] if layers else None
    return (first.filename, first.root) if first else ("<config>", None)


def parse_config(text: str, filename: str = "<config>", *, strict_source: bool = True,
                 env: Mapping[str, str] | None = None) -> Config:
    """Parse and validate YAML text plus EDGE_AGENT__* environment overrides; raise ConfigError
    with located messages (`file:line:column` for the file, the variable's name for the environment).

    `strict_source=False` is for `replay`, which takes the video from the command line.
    """
    return parse_layers([parse_layer(text, filename)], strict_source=strict_source, env=env)


def _check_source(cfg: Config) -> None:
    s = cfg.source
    if s.kind in ("file", "v4l2", "url") and not s.path:
        raise ValueError(f"source.path: required for source.kind {s.kind}")
    if s.kind == "pipe" and not s.command:
        raise ValueError("source.command: required for source.kind pipe")


def _read(p: Path, what: str, *, fragment: bool = False) -> str:
    problem = regular_file_problem(p) if fragment else None
    if problem is not None:
        raise ConfigError([f"{p}: cannot read {what}: {problem}"])
    try:
        return read_text(p)
    except TooBig as exc:
        raise ConfigError([str(exc)]) from None
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read {what}: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{p}: not UTF-8 text: {exc}"]) from exc


def read_layers(path: str | os.PathLike[str], extra: Mapping[str, Path] | None = None) -> list[Layer]:
    """The main file and its fragments, each parsed; every broken one reported, not only the first.

    `extra` maps a fragment name to a file to read in its place (or in addition, in name order):
    `config validate --fragment` checks a candidate before it is put in the folder."""
    p = Path(path)
    files: dict[str, Path] = {f.name: f for f in fragments(p)}
    files.update(extra or {})
    sources = [(p, False)] + [(files[name], True) for name in sorted(files)]
    layers: list[Layer] = []
    errors: list[str] = []
    for file, fragment in sources:
        try:
            text = _read(file, "config fragment" if fragment else "config", fragment=fragment)
            layers.append(parse_layer(text, str(file)))
        except ConfigError as exc:
            errors += exc.lines
    if errors:
        raise ConfigError(errors)
    return layers


def load_config(path: str | os.PathLike[str] | None, *, strict_source: bool = True,
                env: Mapping[str, str] | None = None, extra: Mapping[str, Path] | None = None) -> Config:
    """Load a config file, its fragments and environment overrides; None gives the embedded defaults."""
    if path is None:
        return parse_config("", "<defaults>", strict_source=False, env=env)
    return parse_layers(read_layers(path, extra), strict_source=strict_source, env=env)


def _layer_sources(layer: Layer, out: dict[str, str]) -> None:
    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = f"{prefix}{k.value}"
                if isinstance(v, yaml.MappingNode) and prefix.count(".") < 1:
                    walk(v, key + ".")
                else:
                    out[key] = f"{layer.filename}:{k.start_mark.line + 1}"

    if layer.root is not None:
        walk(layer.root, "")


def provenance(text: str, filename: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Where each key set by the file or the environment came from: `file:line` or `env VAR`.
    Keys absent from both are defaults."""
    try:
        layer: Layer | None = parse_layer(text, filename)
    except ConfigError:
        layer = None
    return _sources([layer] if layer else [], env)


def _sources(layers: list[Layer], env: Mapping[str, str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for layer in layers:
        _layer_sources(layer, out)
    for path, (var, _v) in env_overrides(env).items():
        out[".".join(path)] = f"env {var}"
    return out


def config_sources(path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Where each key of the effective config came from, main file, fragments and environment
    together (the last one that set a key wins, as in the merge): `file:line` or `env VAR`; keys
    absent from all of them are defaults."""
    return _sources(read_layers(path) if path is not None else [], env)


def config_sha256(cfg: Config) -> str:
    """A fingerprint of the effective config (every key, defaults included, after the merge and the
    environment) less `device_id`, which is a label of its own and would make every device's hash
    differ: devices with the same hash run the same settings, and a push that changed any changes it."""
    text = json.dumps(cfg.model_dump(mode="json", exclude={"device_id"}), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
