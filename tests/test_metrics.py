"""The metric declarations: every metric is declared once with help and base units, every call site
names a declared metric, misuse is an error, and Prometheus' linter accepts the exposition."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edge_agent.metrics import DECLARED, Metrics, UndeclaredMetricError, declared_names
from tests import promtool

ROOT = Path(__file__).resolve().parent.parent
CALL = re.compile(r"""\.(inc|set|observe|timed|get|total|labelled|observations)\(\s*["'](edge_agent_\w+)["']""")
NAME_LITERAL = re.compile(r"""["'](edge_agent_[a-z0-9_]+)["']""")


def exercised() -> Metrics:
    """A registry where every declared metric has a value (labelled ones too)."""
    m = Metrics()
    for spec in DECLARED.values():
        labels = {name: "x" for name in spec.labels}
        if spec.kind == "counter":
            m.inc(spec.name, 3, **labels)
        elif spec.kind == "gauge":
            m.set(spec.name, 2.5, **labels)
        else:
            m.observe(spec.name, 0.42)
    return m


def test_every_call_site_names_a_declared_metric() -> None:
    calls: list[tuple[str, str]] = []
    for path in sorted((ROOT / "edge_agent").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        calls += [(f"{path.relative_to(ROOT)}", m[2]) for m in CALL.finditer(text)]
        # any metric-like literal, however it reaches the API (a tuple of names, a variable)
        calls += [(f"{path.relative_to(ROOT)}", m[1]) for m in NAME_LITERAL.finditer(text)]
    assert len({name for _, name in calls}) >= 20, "the scan found too few call sites: is the pattern stale?"
    undeclared = sorted({f"{where}: {name}" for where, name in calls if name not in DECLARED})
    assert not undeclared, "undeclared metrics used:\n" + "\n".join(undeclared)


def test_declarations_follow_the_prometheus_naming_rules() -> None:
    for spec in DECLARED.values():
        assert re.fullmatch(r"edge_agent_[a-z0-9_]+", spec.name), spec.name
        assert len(spec.help) > 15 and spec.help.endswith("."), f"{spec.name}: help text should say what it counts"
        assert spec.name.endswith("_total") == (spec.kind == "counter"), f"{spec.name}: _total is for counters only"
        assert not re.search(r"_(ms|us|millis|kb|mb|kib|mib|percent)(_|$)", spec.name), f"{spec.name}: base units"
        if spec.kind == "histogram":
            assert spec.name.endswith("_seconds") and list(spec.buckets) == sorted(spec.buckets), spec.name


def test_sightings_and_events_are_told_apart_in_the_help() -> None:
    assert "per analysed frame" in DECLARED["edge_agent_detections_total"].help
    assert "edge_agent_events_total" in DECLARED["edge_agent_detections_total"].help


def test_an_undeclared_name_wrong_type_or_wrong_labels_is_an_error() -> None:
    m = Metrics(process=False)
    with pytest.raises(UndeclaredMetricError, match="edge_agent_clip_ms.*not declared.*edge_agent/metrics.py"):
        m.set("edge_agent_clip_ms", 12.0)
    for call in (lambda: m.inc("edge_agent_frame_total"), lambda: m.observe("edge_agent_detect_ms", 1.0),
                 lambda: m.get("edge_agent_nope")):
        with pytest.raises(UndeclaredMetricError):
            call()
    with pytest.raises(TypeError, match="is a histogram, not a gauge"):
        m.set("edge_agent_upload_seconds", 0.3)
    with pytest.raises(TypeError, match="is a counter, not a histogram"):
        m.observe("edge_agent_frames_total", 1)
    with pytest.raises(ValueError, match=r"takes labels \(result\), got \(none\)"):
        m.inc("edge_agent_uploads_total")
    with pytest.raises(ValueError, match=r"takes labels \(none\), got \(reason\)"):
        m.inc("edge_agent_frames_total", reason="x")
    with pytest.raises(ValueError):
        m.inc("edge_agent_frames_total", -1)  # a counter never goes down


def test_registries_are_independent_and_reads_see_what_was_counted() -> None:
    a, b = Metrics(process=False), Metrics(process=False)
    a.inc("edge_agent_frames_total", 5)
    a.inc("edge_agent_spool_dropped_total", 2, reason="max_age")
    a.inc("edge_agent_spool_dropped_total", reason="lost")
    a.set("edge_agent_spool_clips", 7)
    a.observe("edge_agent_clip_seconds", 0.25)
    a.observe("edge_agent_clip_seconds", 0.5)
    assert (a.get("edge_agent_frames_total"), b.get("edge_agent_frames_total")) == (5, 0)
    assert a.get("edge_agent_spool_dropped_total", reason="max_age") == 2
    assert a.get("edge_agent_spool_dropped_total", reason="never") == 0
    assert a.total("edge_agent_spool_dropped_total") == 3
    assert a.labelled("edge_agent_spool_dropped_total", "reason") == {"max_age": 2, "lost": 1}
    assert a.get("edge_agent_spool_clips") == 7
    assert a.observations("edge_agent_clip_seconds") == (2, 0.75)
    assert b.observations("edge_agent_clip_seconds") == (0, 0.0)
    with pytest.raises(TypeError, match="histogram"):
        a.get("edge_agent_clip_seconds")


def test_timed_observes_also_when_the_call_raises() -> None:
    m = Metrics(process=False)
    assert m.timed("edge_agent_decode_seconds", lambda x: x * 2, 21) == 42

    def boom() -> None:
        raise RuntimeError("bad packet")

    with pytest.raises(RuntimeError):
        m.timed("edge_agent_decode_seconds", boom)
    assert m.observations("edge_agent_decode_seconds")[0] == 2


def test_the_exposition_has_help_build_info_process_metrics_and_upload_results_from_the_start() -> None:
    text = Metrics().prometheus_text()
    for spec in DECLARED.values():
        assert f"# HELP {spec.name} " in text and f"# TYPE {spec.name} {spec.kind}" in text, spec.name
    assert re.search(r'^edge_agent_build_info\{commit="[^"]+",python="[\d.]+",version="[^"]+"\} 1\.0$', text, re.M)
    for result in ("delivered", "duplicate", "retry", "quarantined"):  # rate() works before the first upload
        assert f'edge_agent_uploads_total{{result="{result}"}} 0.0' in text
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds"):
        assert re.search(rf"^{name} \d", text, re.M), name
    assert "_created" not in text


def test_every_exported_series_is_a_declared_name() -> None:
    text = exercised().prometheus_text()
    exported = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    assert exported <= declared_names(), exported - declared_names()


@promtool.needs_promtool
def test_promtool_accepts_the_exposition_with_every_metric_set() -> None:
    promtool.check_metrics(exercised().prometheus_text())


@promtool.needs_promtool
def test_promtool_rejects_what_it_should() -> None:
    """The check can fail: the old exposition (no HELP, milliseconds) does not pass."""
    res = promtool.run("check", "metrics", stdin="# TYPE edge_agent_clip_ms gauge\nedge_agent_clip_ms 12.5\n")
    assert res.returncode != 0 and "no help text" in res.stdout + res.stderr


def test_build_info_names_the_installed_version_and_the_git_commit_of_this_build() -> None:
    """Two builds of the agent must be told apart on a dashboard: version from the installed
    metadata (setuptools-scm, from git), commit from the file setuptools-scm wrote beside it."""
    import subprocess
    from importlib import metadata

    import edge_agent

    text = Metrics().prometheus_text()
    line = next(x for x in text.splitlines() if x.startswith("edge_agent_build_info{"))
    assert f'version="{metadata.version(edge_agent.DIST_NAME)}"' in line
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=Path(edge_agent.__file__).parent).stdout.strip()
    commit = re.search(r'commit="([^"]+)"', line).group(1)
    if head:  # a git checkout: the build's commit is a prefix of a real commit (HEAD when freshly installed)
        assert commit != "unknown" and subprocess.run(["git", "cat-file", "-e", commit], capture_output=True,
                                                      cwd=Path(edge_agent.__file__).parent).returncode == 0
