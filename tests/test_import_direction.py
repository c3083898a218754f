"""Imports run one way, as docs/architecture.md section 2 states: every module of edge_agent/ belongs to
one of the layers that line names, and imports only its own layer and the layers after it; and nothing
imports in a circle, neither modules nor the line's entries (a circle through two entries of one layer
is invisible to the layer check). The layer list is read from the document itself, so the doc and the
check cannot drift apart. Type-only and function-level imports count too: a type from an upper layer
is a dependency on it all the same."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "edge_agent"
DOC = ROOT / "docs" / "architecture.md"


def layers_from_doc(text: str) -> list[list[str]]:
    """`a → b, c → d` after "imports run one way" in section 2: [[a], [b, c], [d]], top first."""
    section = text.split("## 2.", 1)[1].split("\n## ", 1)[0]
    after = section.split("imports run one way", 1)[1]
    chain = re.search(r"`([^`]+)`", after)
    assert chain, "section 2 lost its import line"
    return [[name.strip() for name in layer.split(",")] for layer in " ".join(chain.group(1).split()).split("→")]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(name: str, is_package: bool, source: str, known: set[str]) -> set[str]:
    """The edge_agent modules a module imports (anywhere in it: top level, functions, TYPE_CHECKING)."""
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" for a in node.names]  # `from pkg import module` or a name
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target.startswith("edge_agent"):
                found.add(target)
    return found


def layer_of(module: str, layers: list[list[str]]) -> int | None:
    """The layer whose entry is the longest prefix of the module (`pipeline.wiring` before `pipeline`);
    the package itself (its version) is at the bottom."""
    short = module.removeprefix("edge_agent").lstrip(".")
    if short in ("", "_version"):
        return len(layers) - 1
    best: tuple[int, int] | None = None
    for i, layer in enumerate(layers):
        for entry in layer:
            matches = short == entry or short.startswith(entry + ".")
            if matches and (best is None or len(entry) > best[1]):
                best = (i, len(entry))
    return None if best is None else best[0]


def upward_imports(layers: list[list[str]]) -> tuple[list[str], list[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(f) for f in files}
    unplaced, upward = [], []
    for f in files:
        mod = module_name(f)
        mine = layer_of(mod, layers)
        if mine is None:
            unplaced.append(mod)
            continue
        for target in sorted(imported_modules(mod, f.name == "__init__.py", f.read_text(encoding="utf-8"), known)):
            theirs = layer_of(target, layers)
            if theirs is not None and theirs < mine:
                upward.append(f"{mod} imports {target} (layer {' / '.join(layers[theirs])} is above "
                              f"{' / '.join(layers[mine])})")
    return unplaced, upward


def test_the_doc_states_the_layers_top_first() -> None:
    layers = layers_from_doc(DOC.read_text(encoding="utf-8"))
    assert layers[0] == ["cli"] and "const" in layers[-1], layers
    assert layer_of("edge_agent.pipeline.wiring", layers) < layer_of("edge_agent.pipeline.detect_stage", layers)


def test_every_module_imports_only_its_layer_and_those_below() -> None:
    layers = layers_from_doc(DOC.read_text(encoding="utf-8"))
    unplaced, upward = upward_imports(layers)
    assert not unplaced, f"modules in no layer of docs/architecture.md section 2: {unplaced}"
    assert not upward, "\n".join(upward)


def test_an_upward_import_is_found() -> None:
    """The scan sees relative, function-level and `from package import module` imports."""
    known = {"edge_agent", "edge_agent.app", "edge_agent.delivery", "edge_agent.delivery.spool",
             "edge_agent.delivery.uploader"}
    source = ("from . import spool\n"
              "def later():\n"
              "    from ..app import Agent\n"
              "    from edge_agent import app\n")
    found = imported_modules("edge_agent.delivery.uploader", False, source, known)
    assert found == {"edge_agent.delivery.spool", "edge_agent.app"}
    layers = layers_from_doc(DOC.read_text(encoding="utf-8"))
    assert layer_of("edge_agent.app", layers) < layer_of("edge_agent.delivery.uploader", layers)


def import_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(f) for f in files}
    return {module_name(f): imported_modules(module_name(f), f.name == "__init__.py", f.read_text(encoding="utf-8"),
                                             known) - {module_name(f)} for f in files}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected parts of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def entry_of(module: str, layers: list[list[str]]) -> str:
    """The line's entry a module belongs to (the longest prefix: `pipeline.wiring` before `pipeline`)."""
    short = module.removeprefix("edge_agent").lstrip(".")
    entries = [e for layer in layers for e in layer if short == e or short.startswith(e + ".")]
    return max(entries, key=len) if entries else short or "edge_agent"


def test_no_module_imports_in_a_circle() -> None:
    assert not circles(import_graph()), "modules importing each other, through these: " + str(circles(import_graph()))


def test_no_entry_of_the_layer_line_imports_in_a_circle() -> None:
    layers = layers_from_doc(DOC.read_text(encoding="utf-8"))
    entries: dict[str, set[str]] = {}
    for mod, targets in import_graph().items():
        mine = entry_of(mod, layers)
        entries.setdefault(mine, set()).update(t for t in (entry_of(x, layers) for x in targets) if t != mine)
    assert not circles(entries), f"entries of the layer line importing each other: {circles(entries)}"


def test_a_circle_is_found() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []
