"""The README's and the docs' examples run, and their links lead somewhere in this repository.

Every fenced block of README.md and docs/*.md says what it is by its info string:

- `sh`: a shell example that can run on any clone, as a user, offline, in seconds: it is run here, in a
  scratch folder that sees the repository's sample_media/ and configs/, and must exit 0. Only the
  commands in RUNNABLE may appear in it, so nothing that needs root, a device or a network slips in;
- `sh norun`: a shell example this machine cannot run (sudo, apt, systemctl, a device, a server that
  runs until stopped, a benchmark of minutes): marked, not run;
- `yaml`: a config or a fragment: it must validate as the agent loads it (strict about keys, not about
  the camera being there);
- `text`: output, a file layout or a diagram, not an example.

A fence without an info string (architecture.md's diagrams) must not hold a command: an example nobody
marked is an example nobody checks.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_agent.config import ConfigError, parse_config

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_BYTES = 15_000  # a newcomer reads it in ten minutes; the rest is in docs/

# what a `sh` example may run: the agent's own command and the project's interpreter
RUNNABLE = {"edge-agent", ".venv/bin/edge-agent", ".venv/bin/python"}
KINDS = {"sh", "sh norun", "yaml", "text", ""}
# what makes a line of an unmarked fence a command rather than a diagram
COMMAND_LINE = re.compile(r"^\s*(\$ |sudo |edge-agent |\./|\.venv/|python3? |pip )")
# the folders a `sh` example may read, linked into its scratch folder
SHARED = ("sample_media", "configs")


@dataclass(frozen=True)
class Example:
    page: Path
    line: int  # of the opening fence, 1-based
    kind: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def examples(page: Path) -> list[Example]:
    found, lines = [], page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^```(.*)$", lines[i])
        if m is None:
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and lines[i] != "```":
            body.append(lines[i])
            i += 1
        assert i < len(lines), f"{page.relative_to(ROOT)}:{start + 1}: fence never closed"
        found.append(Example(page, start + 1, m[1].strip(), "\n".join(body) + "\n"))
        i += 1
    return found


ALL = [e for page in PAGES for e in examples(page)]


def of_kind(kind: str) -> list[Example]:
    return [e for e in ALL if e.kind == kind]


def commands(script: str) -> list[list[str]]:
    """The simple commands of a shell example (continuation lines joined, comments dropped), each as
    its words without the leading VAR=value assignments."""
    out = []
    for line in script.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words: list[str] = []
        for token in [*lexer, ";"]:
            if token in (";", "&&", "||", "|", "&"):
                while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
                    words.pop(0)
                if words:
                    out.append(words)
                words = []
            else:
                words.append(token)
    return out


def test_the_readme_is_short() -> None:
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes: move details to a page in docs/"


def test_every_fence_says_what_it_is() -> None:
    unknown = [f"{e.where}: ```{e.kind}" for e in ALL if e.kind not in KINDS]
    assert not unknown, f"fences must be one of {sorted(KINDS)}: {unknown}"
    unmarked = [f"{e.where}: {line.strip()}" for e in of_kind("") for line in e.text.splitlines()
                if COMMAND_LINE.match(line)]
    assert not unmarked, ("a shell example without `sh` (run here) or `sh norun` (not runnable here), or "
                          f"output without `text`: {unmarked}")
    assert of_kind("sh") and of_kind("sh norun") and of_kind("yaml")


def test_a_runnable_example_runs_only_the_agent() -> None:
    """What runs here must be safe anywhere: no sudo, no package manager, no service, no network tool."""
    wrong = [f"{e.where}: {' '.join(words)}" for e in of_kind("sh") for words in commands(e.text)
             if words[0] not in RUNNABLE]
    assert not wrong, f"mark these `sh norun`, or keep to {sorted(RUNNABLE)}: {wrong}"


@pytest.mark.parametrize("example", of_kind("yaml"), ids=lambda e: e.where)
def test_every_config_example_is_valid(example: Example) -> None:
    try:
        parse_config(example.text, example.where, strict_source=False, env={})
    except ConfigError as exc:
        pytest.fail(f"{example.where}: {exc}")


def scratch(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A folder to run examples in, as a user's clone would be: the shared folders linked in, `.venv`
    the interpreter running these tests, its commands first on PATH, a HOME of its own and no agent
    settings from this environment."""
    venv = Path(sys.executable).parent
    if not (venv / "edge-agent").exists():
        pytest.skip("edge-agent is not installed beside this interpreter (./dev.sh setup makes .venv)")
    work = tmp_path / "clone"
    work.mkdir()
    for name in SHARED:
        (work / name).symlink_to(ROOT / name)
    (work / ".venv").symlink_to(venv.parent)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("EDGE_AGENT") and k not in ("CREDENTIALS_DIRECTORY", "STATE_DIRECTORY",
                                                             "XDG_STATE_HOME", "NOTIFY_SOCKET")}
    env.update(HOME=str(home), PATH=f"{venv}{os.pathsep}/usr/bin:/bin", LC_ALL="C.UTF-8")
    return work, env


@pytest.mark.slow
@pytest.mark.parametrize("example", of_kind("sh"), ids=lambda e: e.where)
def test_every_runnable_shell_example_exits_0(example: Example, tmp_path: Path) -> None:
    work, env = scratch(tmp_path)
    res = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", example.text], cwd=work, env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, f"{example.where} exited {res.returncode}:\n{example.text}{res.stdout}{res.stderr}"


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", text))


def anchors(page: Path) -> set[str]:
    return {slug(m[1]) for m in re.finditer(r"^#+ (.*)$", prose(page), re.M)}


def prose(page: Path) -> str:
    """The page without its fenced blocks and code spans, where a `](` is not a link."""
    text = re.sub(r"^```.*?^```$", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def links(page: Path) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", prose(page)) + re.findall(r"<([a-z]+:[^>\s]+)>", prose(page))


def test_every_link_leads_to_a_file_or_heading_of_this_repository() -> None:
    broken = []
    for page in PAGES:
        for target in links(page):
            path, _, anchor = target.partition("#")
            if re.match(r"^[a-z][a-z0-9+.-]*:", path) or path.startswith("/"):
                broken.append(f"{page.relative_to(ROOT)}: {target} leads outside the repository")
                continue
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists() or ROOT not in (dest, *dest.parents):
                broken.append(f"{page.relative_to(ROOT)}: {target}: no such file in the repository")
            elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
                broken.append(f"{page.relative_to(ROOT)}: {target}: no heading #{anchor} there")
    assert not broken, broken


def test_every_benchmark_script_is_described() -> None:
    page = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    scripts = sorted(p.name for p in (ROOT / "benchmarks").iterdir() if p.suffix in (".py", ".sh"))
    missing = [s for s in scripts if not re.search(rf"^\| `{re.escape(s)}[ `]", page, re.M)]
    assert scripts and not missing, f"docs/benchmarks.md has no row of its own for: {missing}"
