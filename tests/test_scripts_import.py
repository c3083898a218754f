"""Scripts outside the package (benchmarks, sample-media generators, test helpers) and every shell script
still load: a module moved inside edge_agent must not break one of them unnoticed.

Each Python script is imported in a fresh interpreter, as `python script.py` would load it (its folder
first on sys.path, __name__ not "__main__"). Imports inside functions run only when that code runs (the
arm64 smoke helper imports the detector inside the emulated root), so every `edge_agent` import in the
file, at any depth, is also resolved: the module must exist and have the imported names.
"""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = sorted([*REPO.glob("benchmarks/*.py"), *REPO.glob("sample_media/*.py"), *REPO.glob("packaging/*.py"),
                  *(p for p in REPO.glob("tests/*.py") if not p.name.startswith(("test_", "conftest")))])
SHELL = sorted({*REPO.glob("benchmarks/*.sh"), *REPO.glob("packaging/*.sh"), *REPO.glob("fleet/*.sh"), REPO / "dev.sh",
                *([REPO / ".ci" / "run"] if (REPO / ".ci" / "run").exists() else [])})
POSIX_SH = sorted(p for p in (REPO / "packaging" / "debian").iterdir() if p.name in ("postinst", "prerm", "postrm"))


def test_the_script_lists_are_not_empty() -> None:
    assert any(p.name == "arm64_smoke_helper.py" for p in SCRIPTS)
    assert any(p.name == "build_deb.py" for p in SCRIPTS) and any(p.name == "test-playbook.sh" for p in SHELL)
    assert any(p.name == "arm64_smoke.sh" for p in SHELL)


# One interpreter imports every script in turn (each as `python script.py` would load it, but with
# __name__ != "__main__"), reporting each failure: one start of numpy/cv2/av instead of one per script.
_IMPORT_ALL = """
import importlib.util, json, sys, traceback
errors = {}
for path in sys.argv[1:]:
    folder = path.rsplit("/", 1)[0]
    sys.path.insert(0, folder)
    name = "script_" + path.rsplit("/", 1)[1][:-3]
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # as the import system does: dataclasses look their module up
        spec.loader.exec_module(mod)
    except BaseException:
        errors[path] = traceback.format_exc(limit=-3)
    finally:
        sys.path.remove(folder)
print(json.dumps(errors))
"""


@pytest.fixture(scope="module")
def import_errors() -> dict[str, str]:
    proc = subprocess.run([sys.executable, "-c", _IMPORT_ALL, *map(str, SCRIPTS)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_each_script_imports(script: Path, import_errors: dict[str, str]) -> None:
    assert str(script) not in import_errors, import_errors.get(str(script))


def edge_agent_imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every `import edge_agent...` / `from edge_agent... import ...` in the file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] == "edge_agent"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "edge_agent":
            out.append((node.lineno, node.module, [a.name for a in node.names]))
    return out


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_edge_agent_import_in_a_script_resolves_even_inside_functions(script: Path) -> None:
    missing = []
    for line, module, names in edge_agent_imports(script):
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            missing.append(f"{script.name}:{line}: {module}: {exc}")
            continue
        for name in names:
            if name != "*" and not hasattr(mod, name):
                try:
                    importlib.import_module(f"{module}.{name}")
                except ImportError:
                    missing.append(f"{script.name}:{line}: {module} has no {name}")
    assert not missing, "\n".join(missing)


@pytest.mark.parametrize("script", SHELL, ids=lambda p: str(p.relative_to(REPO)))
def test_each_bash_script_parses(script: Path) -> None:
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("script", POSIX_SH, ids=lambda p: p.name)
def test_each_maintainer_script_parses_as_posix_sh(script: Path) -> None:
    proc = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
