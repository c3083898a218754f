"""No module reads or writes another module's private attributes.

The rule, for every `x._name` (one leading underscore; dunders are Python's own) in edge_agent/;
`getattr(x, "_name")` and its kin count too. Allowed when `x` is `self` or `cls`; when `x` is a
module imported from outside edge_agent (the standard library's or a dependency's documented names
such as `os._exit`); or when the module itself defines `_name` on its own classes (`self._name = ...`,
a method `_name`, a class attribute): a closure's alias of `self`, or another instance of the same
class. Anything else reaches into a part owned by another module, which then cannot change its
insides without breaking a reader it does not know.
"""

from __future__ import annotations

import ast
from pathlib import Path

import edge_agent

ROOT = Path(edge_agent.__file__).parent


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _outside_modules(tree: ast.Module) -> set[str]:
    """Names bound by `import x` / `import x as y` of modules outside edge_agent."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not alias.name.startswith("edge_agent"):
                    names.add(alias.asname or alias.name.split(".")[0])
    return names


def _own_private_names(tree: ast.Module) -> set[str]:
    """Private attributes this module's classes define."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and _private(item.name):
                    names.add(item.name)
                targets = item.targets if isinstance(item, ast.Assign) else (
                    [item.target] if isinstance(item, ast.AnnAssign) else [])
                names.update(t.id for t in targets if isinstance(t, ast.Name) and _private(t.id))
        if (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and _private(node.attr)
                and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
            names.add(node.attr)
    return names


def violations(source: str, where: str) -> list[str]:
    tree = ast.parse(source)
    outside = _outside_modules(tree)
    own = _own_private_names(tree)
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "setattr", "hasattr", "delattr") and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
                and _private(node.args[1].value) and node.args[1].value not in own):
            found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")  # the same reach, spelt as a string
            continue
        if not isinstance(node, ast.Attribute) or not _private(node.attr):
            continue
        base = node.value
        if isinstance(base, ast.Name) and (base.id in ("self", "cls") or base.id in outside):
            continue
        if node.attr in own:
            continue
        found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
    return sorted(found, key=lambda line: int(line.split(":")[1]))


def test_no_module_reaches_into_another_modules_private_attributes() -> None:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        found += violations(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT.parent)))
    assert found == [], "private attributes of another module:\n" + "\n".join(found)


def test_the_rule_flags_a_foreign_private_and_allows_the_modules_own() -> None:
    """The scan itself can fail: a read and a write of another part's insides are caught; the module's
    own privates, through `self` or an alias of it, and a library's documented names are not."""
    source = (
        "import os\n"
        "class Watcher:\n"
        "    def __init__(self):\n"
        "        self._due = 0\n"
        "    def start(self, spool):\n"
        "        watcher = self\n"
        "        watcher._due += 1\n"
        "        with spool._lock:\n"
        "            spool._db = None\n"
        "        getattr(spool, '_db', None)\n"
        "        os._exit(0)\n")
    assert violations(source, "m.py") == ["m.py:8: spool._lock", "m.py:9: spool._db",
                                          "m.py:10: getattr(spool, '_db', None)"]
