"""Where a YAML config goes wrong, in a technician's words.

Errors must be actionable over a slow SSH session, so each one names the file, line and column, the
dotted key, and what is allowed (or the key or variable probably meant). The pydantic error's
location is walked through the composed YAML tree to find the line.
"""

from __future__ import annotations

import difflib
import re
from types import UnionType
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from edge_agent.config.schema import ENV_PREFIX, Config


def node_at(root: yaml.Node | None, loc: tuple[Any, ...]) -> tuple[yaml.Node | None, bool]:
    """Walk a composed YAML tree along a pydantic error location; return the deepest node
    reached and whether it is the key node (for unknown keys) rather than the value."""
    node = root
    for i, part in enumerate(loc):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == str(part):
                    if i == len(loc) - 1:
                        return v, False
                    node = v
                    break
            else:
                return node, False
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            return node, False
    return node, False


def _key_node(root: yaml.Node | None, loc: tuple[Any, ...]) -> yaml.Node | None:
    parent, _ = node_at(root, loc[:-1]) if len(loc) > 1 else (root, False)
    if isinstance(parent, yaml.MappingNode):
        for k, _v in parent.value:
            if k.value == str(loc[-1]):
                return k
    return parent


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: Any = Config
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part)) if isinstance(model, type) else None
        if field is None:
            return None
        ann = field.annotation
        args = getattr(ann, "__args__", ()) or (ann,)
        model = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            return None
    return model


def _field_type(path: tuple[str, ...]) -> Any:
    """The schema's type at a dotted path (a key inside a dict field gets the dict's value type);
    None when the path leads nowhere."""
    if not path:
        return None
    model = _model_at(path[:-1])
    if model is not None:
        field = model.model_fields.get(path[-1])
        return field.annotation if field is not None else None
    parent = _field_type(path[:-1])
    return get_args(parent)[1] if get_origin(parent) is dict else None


def wants_text(path: tuple[str, ...]) -> bool:
    ann = _field_type(path)
    return ann is str or (get_origin(ann) in (Union, UnionType) and str in get_args(ann))


def text_as_written(node: yaml.Node | None, data: Any, path: tuple[str, ...] = ()) -> None:
    """Where the schema wants text, take an unquoted number or boolean as written: `framerate: 30`
    is "30" and `device_id: 0042` stays "0042" (YAML alone would make it the octal number 34)."""
    if not isinstance(node, yaml.MappingNode) or not isinstance(data, dict):
        return
    for k, v in node.value:
        if not isinstance(k, yaml.ScalarNode) or k.value not in data:
            continue
        sub = (*path, k.value)
        value = data[k.value]
        if isinstance(v, yaml.MappingNode):
            text_as_written(v, value, sub)
        elif (isinstance(v, yaml.ScalarNode) and v.style is None and value is not None
              and not isinstance(value, str) and wants_text(sub)):
            data[k.value] = v.value


def duplicate_keys(root: yaml.Node | None, filename: str) -> list[str]:
    """A key given twice: YAML keeps the last one silently, so a technician's edit further up would
    not count; refuse it and name both lines."""
    lines: list[str] = []
    seen_nodes: set[int] = set()

    def walk(node: yaml.Node, prefix: str) -> None:
        if id(node) in seen_nodes:  # an alias repeats a node already checked
            return
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[str, yaml.Node] = {}
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                    if k.value in first:
                        m = k.start_mark
                        lines.append(f"{filename}:{m.line + 1}:{m.column + 1}: {prefix}{k.value} given twice "
                                     f"(first at line {first[k.value].start_mark.line + 1})")
                    else:
                        first[k.value] = k
                    walk(v, f"{prefix}{k.value}.")
                else:
                    walk(v, prefix)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, f"{prefix.removesuffix('.')}[{i}].")

    if root is not None:
        walk(root, "")
    return lines


def _first_word(text: str, mark: yaml.Mark) -> str:
    line = text.splitlines()[mark.line] if mark.line < len(text.splitlines()) else ""
    words = line[mark.column:].split("#", 1)[0].split()
    return words[0] if words else ""


def _starts_its_line(text: str, mark: yaml.Mark) -> bool:
    line = text.splitlines()[mark.line] if mark.line < len(text.splitlines()) else ""
    return line[:mark.column].strip(" -") == ""


def _plain_scalar_before(text: str, mark: yaml.Mark) -> yaml.ScalarToken | None:
    """The last unquoted scalar the scanner read before `mark` (the scan stops at the error)."""
    last = None
    try:
        for tok in yaml.scan(text, Loader=yaml.SafeLoader):
            if tok.start_mark.index >= mark.index:
                break
            last = tok
    except yaml.YAMLError:
        pass
    return last if isinstance(last, yaml.ScalarToken) and last.plain else None


def syntax_error(exc: yaml.MarkedYAMLError, text: str, filename: str) -> str:
    """PyYAML's scanner messages, turned into the mistake a person made where there is a known one."""
    m = exc.problem_mark or exc.context_mark
    problem = exc.problem or ""

    def at(mark: yaml.Mark) -> str:
        return f"{filename}:{mark.line + 1}:{mark.column + 1}"

    if m is not None and problem.startswith("found character '\\t'"):
        how = "indent with spaces" if _starts_its_line(text, m) else "use spaces"
        return f"{at(m)}: tabs are not allowed in YAML, {how}"
    # A key without its colon: alone on the last line of a block PyYAML says "could not find expected
    # ':'" at the key; followed by more keys, it reads the key and the next lines as one multi-line
    # text and stumbles on the next ':' a line too late.
    key_mark = None
    hint = ""
    if exc.context == "while scanning a simple key" and exc.context_mark is not None:
        key_mark = exc.context_mark
    elif m is not None and (problem.startswith("mapping values are not allowed")
                            or problem.startswith("expected <block end>")):
        scalar = _plain_scalar_before(text, m)
        if scalar is not None and scalar.start_mark.line < m.line:
            if _starts_its_line(text, scalar.start_mark):
                key_mark = scalar.start_mark
            else:
                hint = _indent_hint(text, m.line, scalar.start_mark.line)
    if key_mark is not None and _first_word(text, key_mark):
        n = key_mark.line + 1
        return f"{at(key_mark)}: line {n} has no ':' after '{_first_word(text, key_mark)}' (a key needs 'key: value')"
    where = at(m) if m is not None else filename
    ctx = exc.context_mark
    opened = (f" ({exc.context} at line {ctx.line + 1}, column {ctx.column + 1})"
              if exc.context and ctx is not None and exc.problem else "")
    return f"{where}: YAML syntax error: {exc.problem or exc.context}{opened}{hint}"


def _indent_hint(text: str, line: int, above: int) -> str:
    """Two keys of one section at different indents (0-based line numbers): say which way it is off."""
    lines = text.splitlines()

    def indent(n: int) -> int:
        return len(lines[n]) - len(lines[n].lstrip(" "))

    if line >= len(lines) or indent(line) == indent(above):
        return ""
    if indent(line) > indent(above):
        return (f" (line {line + 1} is indented deeper than line {above + 1}, so it reads as part of line "
                f"{above + 1}'s value: keys of one section must line up)")
    return f" (line {line + 1} is indented less than line {above + 1}: keys of one section must line up)"


def _env_suggestion(path: tuple[str, ...], loc: tuple[Any, ...]) -> str:
    """The variable the technician probably meant, for an unknown key set from the environment."""
    i = len(loc) - 1
    model = _model_at(tuple(loc[:-1]))
    names = list(model.model_fields) if model else []
    bad = str(loc[-1])
    fixed: tuple[str, ...] | None = None
    for name in names:  # UPLOAD_URL: one underscore where section and key need two
        sub = _model_at((*map(str, loc[:-1]), name))
        if sub is not None and bad.startswith(name + "_") and bad[len(name) + 1:] in sub.model_fields:
            fixed = (name, bad[len(name) + 1:])
    if fixed is None:
        close = difflib.get_close_matches(bad, names, n=1, cutoff=0.6)
        fixed = (close[0],) if close else None
    if fixed is None or i >= len(path):
        return f"allowed: {', '.join(names)}"
    var = ENV_PREFIX + "__".join((*path[:i], *fixed, *path[i + 1:])).upper()
    return f"did you mean {var}?"


def _same_start(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def _allowed(err: dict[str, Any]) -> str:
    ctx = err.get("ctx") or {}
    t = err["type"]
    if t == "literal_error":
        return f" (allowed: {ctx.get('expected', '')})"
    for k, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if k in ctx:
            return f" (allowed: {sym} {ctx[k]})"
    if t in ("bool_parsing", "bool_type"):
        return " (allowed: true, false)"
    if t.startswith(("int_", "float_")):
        return " (allowed: a number)"
    if t == "string_type":
        return " (allowed: text)"
    return ""


def _owner(layers: list[tuple[str, yaml.Node | None]], loc: tuple[Any, ...]) -> tuple[str, yaml.Node | None]:
    """The file whose tree sets the deepest part of `loc`, the later file on a tie (a fragment
    overrides the main file): that is where the technician must look."""
    best = layers[0] if layers else ("<config>", None)
    depth = -1
    for filename, root in layers:
        node, n = root, 0
        for part in loc:
            if isinstance(node, yaml.MappingNode):
                node = next((v for k, v in node.value if k.value == str(part)), None)
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
            else:
                node = None
            if node is None:
                break
            n += 1
        if n >= depth and (n > 0 or depth < 0):
            best, depth = (filename, root), n
    return best


def format_errors(exc: ValidationError, layers: list[tuple[str, yaml.Node | None]],
                  overrides: dict[tuple[str, ...], tuple[str, Any]] | None = None) -> list[str]:
    """One located line per validation error; `layers` are (file name, YAML tree) in merge order."""
    lines = []
    overrides = overrides or {}
    for err in exc.errors():
        loc = tuple(p for p in err["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        # the variable that set this key, or the one under an unknown section it made (UPLOD__URL)
        env_path, env_var = next(((path, var) for path, (var, _v) in overrides.items()
                                  if loc and _same_start(tuple(map(str, loc)), path)), ((), None))
        if env_var is not None:
            text = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                text = f"unknown key ({_env_suggestion(env_path, loc)})"
            lines.append(f"environment {env_var}: {key}: {text}{_allowed(err)}")
            continue
        filename, root = _owner(layers, loc)
        if err["type"] == "extra_forbidden":
            node = _key_node(root, loc)
            model = _model_at(loc[:-1])
            names = list(model.model_fields) if model else []
            close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else f"allowed: {', '.join(names)}"
            if loc == ("metrics",):  # renamed in 0.x: the metrics server became the device's web server
                hint = "renamed: the section is now http: (http.port, http.host)"
            msg = f"{key}: unknown key ({hint})"
        elif err["type"] == "model_type":
            # a section given a value instead of `key: value` lines under it
            node, _ = node_at(root, loc)
            key_node = _key_node(root, loc)
            if (isinstance(node, yaml.ScalarNode) and node.style is None and node.value.split()
                    and key_node is not None and key_node.start_mark.line < node.start_mark.line):
                n = node.start_mark.line + 1
                msg = f"line {n} has no ':' after '{node.value.split()[0]}' (a key needs 'key: value')"
            else:
                msg = f"{key}: a section: expected indented 'key: value' lines under it, got {err['input']!r}"
        else:
            text = err["msg"].removeprefix("Value error, ")
            if not loc:
                # a cross-field conflict: point at the first key the message names
                named = re.search(r"\b([a-z_]+)\.([a-z_]+)\b", text)
                if named:
                    loc = (named[1], named[2])
                    key = f"{named[1]}.{named[2]}"
                    filename, root = _owner(layers, loc)
            node, _ = node_at(root, loc)
            got = f", got {err['input']!r}" if loc and not isinstance(err.get("input"), dict) else ""
            got = ", got an empty value" if got and err["input"] is None else got
            msg = f"{key}: {text}{got}{_allowed(err)}"
        if node is not None:
            m = node.start_mark
            lines.append(f"{filename}:{m.line + 1}:{m.column + 1}: {msg}")
        else:
            lines.append(f"{filename}: {msg}")
    return lines
