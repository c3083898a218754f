"""The metric declarations: every metric is a typed attribute of `Metrics`, declared once with help and
base units and exported with its type, help and labels; code under edge_agent/ only writes metrics
through those attributes (never reads one back, never names one by string); misuse is an error at the
call; an info metric never vanishes from a scrape; and Prometheus' linter accepts the exposition."""

from __future__ import annotations

import ast
import inspect
import re
import typing
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge

from edge_agent.metrics import Metrics, MetricSpec, declared_names
from tests import promtool
from tests.metric_values import observations, total, value
from tests.test_metrics_server import parse_exposition

ROOT = Path(__file__).resolve().parent.parent
DECLARED = Metrics.declared()
# what code may do to each kind of metric (a labelled one: `.labels(...)` first; an info one: `set_only`)
WRITES = {"counter": {"inc"}, "gauge": {"set"}, "histogram": {"observe", "time"}}
# the one module that turns the registry into the exposition: the /metrics page
EXPOSITION_READERS = {"edge_agent/service/http.py"}


def write_every_metric(m: Metrics) -> Metrics:
    """Give every declared metric a value (labelled ones too), through its attribute."""
    for attr, spec in DECLARED.items():
        metric = getattr(m, attr)
        labels = {name: "x" for name in spec.labels}
        if spec.info:
            metric.set_only(**labels)
            continue
        if labels:
            metric = metric.labels(**labels)
        if spec.kind == "counter":
            metric.inc(3)
        elif spec.kind == "gauge":
            metric.set(2.5)
        else:
            metric.observe(0.42)
    return m


# --- the declarations ------------------------------------------------------------------------------

def test_declarations_follow_the_prometheus_naming_rules() -> None:
    assert len(DECLARED) >= 40
    for attr, spec in DECLARED.items():
        assert re.fullmatch(r"edge_agent_[a-z0-9_]+", spec.name), spec.name
        # the attribute is the exported name without its prefix and _total: one name to grep for
        assert attr == spec.name.removeprefix("edge_agent_").removesuffix("_total"), (attr, spec.name)
        assert len(spec.help) > 15 and spec.help.endswith("."), f"{spec.name}: help text should say what it counts"
        assert spec.name.endswith("_total") == (spec.kind == "counter"), f"{spec.name}: _total is for counters only"
        assert not re.search(r"_(ms|us|millis|kb|mb|kib|mib|percent)(_|$)", spec.name), f"{spec.name}: base units"
        if spec.kind == "histogram":
            assert spec.name.endswith("_seconds") and list(spec.buckets) == sorted(spec.buckets), spec.name
    assert len({s.name for s in DECLARED.values()}) == len(DECLARED), "a series declared twice"


def test_each_labelled_metric_is_typed_with_exactly_its_label_keywords() -> None:
    """The attribute's type is what a type checker holds a call site to: its keywords must be the labels
    the metric is declared (and exported) with."""
    hints = typing.get_type_hints(Metrics)
    labelled = {attr: spec for attr, spec in DECLARED.items() if spec.labels}
    assert len(labelled) >= 8
    for attr, spec in labelled.items():
        assert typing.get_origin(hints.get(attr)) is MetricSpec, f"{attr}: annotate it MetricSpec[<its labels>]"
        [protocol] = typing.get_args(hints[attr])
        method = getattr(protocol, "set_only" if spec.info else "labels")
        keywords = [p.name for p in inspect.signature(method).parameters.values() if p.kind is p.KEYWORD_ONLY]
        assert sorted(keywords) == sorted(spec.labels), (attr, keywords, spec.labels)


def test_sightings_and_events_are_told_apart_in_the_help() -> None:
    assert "per analysed frame" in Metrics.detections.help
    assert "edge_agent_events_total" in Metrics.detections.help


# --- the exposition --------------------------------------------------------------------------------

def test_every_declared_metric_is_exported_with_its_type_help_and_labels() -> None:
    text = Metrics(process=False).prometheus_text()
    for spec in DECLARED.values():  # from the start, before anything is counted
        assert f"# HELP {spec.name} {spec.help}\n" in text and f"# TYPE {spec.name} {spec.kind}\n" in text, spec.name
    samples = parse_exposition(write_every_metric(Metrics(process=False)).prometheus_text())
    for spec in DECLARED.values():
        parts = {spec.name} | ({f"{spec.name}{s}" for s in ("_bucket", "_count", "_sum")}
                               if spec.kind == "histogram" else set())
        label_sets = {tuple(sorted(k for k, _ in labels if k != "le")) for name, labels in samples if name in parts}
        assert label_sets == {tuple(sorted(spec.labels))}, (spec.name, label_sets)


def test_the_exposition_has_build_info_process_metrics_and_upload_results_from_the_start() -> None:
    text = Metrics().prometheus_text()
    assert re.search(r'^edge_agent_build_info\{commit="[^"]+",python="[\d.]+",version="[^"]+"\} 1\.0$', text, re.M)
    for result in ("delivered", "duplicate", "retry", "quarantined"):  # rate() works before the first upload
        assert f'edge_agent_uploads_total{{result="{result}"}} 0.0' in text
    for result in ("applied", "refused"):
        assert f'edge_agent_config_reloads_total{{result="{result}"}} 0.0' in text
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds"):
        assert re.search(rf"^{name} \d", text, re.M), name
    assert "_created" not in text


def test_every_exported_series_is_a_declared_name() -> None:
    text = write_every_metric(Metrics()).prometheus_text()
    exported = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    assert exported <= declared_names(), exported - declared_names()


@promtool.needs_promtool
def test_promtool_accepts_the_exposition_with_every_metric_set() -> None:
    promtool.check_metrics(write_every_metric(Metrics()).prometheus_text())


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


# --- writing ---------------------------------------------------------------------------------------

def test_registries_are_independent_and_a_scrape_sees_what_was_written() -> None:
    a, b = Metrics(process=False), Metrics(process=False)
    a.frames.inc(5)
    a.spool_dropped.labels(reason="max_age").inc(2)
    a.spool_dropped.labels(reason="lost").inc()
    a.spool_clips.set(7)
    a.clip_seconds.observe(0.25)
    with a.clip_seconds.time():
        pass
    assert (value(a, "edge_agent_frames_total"), value(b, "edge_agent_frames_total")) == (5, 0)
    assert value(a, "edge_agent_spool_dropped_total", reason="max_age") == 2
    assert total(a, "edge_agent_spool_dropped_total") == 3
    assert value(a, "edge_agent_spool_clips") == 7
    assert observations(a, "edge_agent_clip_seconds")[0] == 2
    assert observations(b, "edge_agent_clip_seconds") == (0, 0.0)


def test_misuse_is_an_error_at_the_call() -> None:
    """What a type checker reports before the code runs fails at the call when it runs."""
    m: Any = Metrics(process=False)
    with pytest.raises(AttributeError):
        m.clip_ms.set(12.0)  # not declared
    with pytest.raises(AttributeError):
        m.upload_seconds.set(0.3)  # a histogram is observed
    with pytest.raises(AttributeError):
        m.frames.observe(1)  # a counter is incremented
    with pytest.raises(ValueError, match="missing label values"):
        m.uploads.inc()
    with pytest.raises(ValueError, match="Incorrect label names"):
        m.uploads.labels(reason="x")
    with pytest.raises(ValueError, match="Incorrect label names"):
        m.info.set_only(device_id="cam1")
    with pytest.raises(ValueError):
        m.frames.inc(-1)  # a counter never goes down


class RecordingGauge(Gauge):
    """A gauge that notes, around each change to its label sets, the series a scrape would see then."""

    seen: list[set[tuple[tuple[str, str], ...]]] = []

    def note(self) -> None:
        self.seen.append({tuple(sorted(s.labels.items())) for f in self.collect() for s in f.samples
                          if s.value == 1})

    def labels(self, *values: Any, **labels: Any) -> Any:
        self.note()
        child = super().labels(*values, **labels)
        self.note()
        return child

    def remove(self, *values: Any) -> None:
        self.note()
        super().remove(*values)
        self.note()

    def clear(self) -> None:
        self.note()
        super().clear()
        self.note()


def test_an_info_metric_shows_its_new_labels_before_the_old_ones_go() -> None:
    """A scrape between the steps of a change (a reload's new config hash) must still find the device:
    every instant a scrape could fall in shows a series at 1, and afterwards only the new one is left."""
    from edge_agent.metrics import InfoSeries

    gauge = RecordingGauge("edge_agent_info", "Always 1.", ("device_id", "config_sha256"),
                           registry=CollectorRegistry())
    info = InfoSeries(gauge, ("device_id", "config_sha256"))
    info.set_only(device_id="cam1", config_sha256="aaa")
    RecordingGauge.seen = []
    info.set_only(device_id="cam1", config_sha256="bbb")
    assert RecordingGauge.seen, "the change went past the gauge's label-set methods"
    assert all(RecordingGauge.seen), RecordingGauge.seen
    assert RecordingGauge.seen[-1] == {(("config_sha256", "bbb"), ("device_id", "cam1"))}


def test_a_new_info_label_set_replaces_the_old_one_in_the_exposition() -> None:
    m = Metrics(process=False)
    m.info.set_only(device_id="cam1", site="a", source_kind="file", config_sha256="aaa")
    m.info.set_only(device_id="cam1", site="a", source_kind="file", config_sha256="bbb")
    m.info.set_only(device_id="cam1", site="a", source_kind="file", config_sha256="bbb")
    series = [dict(lbl) for (name, lbl) in parse_exposition(m.prometheus_text()) if name == "edge_agent_info"]
    assert series == [{"config_sha256": "bbb", "device_id": "cam1", "site": "a", "source_kind": "file"}]


# --- how code under edge_agent/ uses them -----------------------------------------------------------

def _names_metrics(node: ast.expr) -> bool:
    """`metrics`, `self.metrics`, `self._metrics`, `agent.metrics`: how the code holds a Metrics."""
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    return name in ("metrics", "_metrics")


def _called(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    parent = parents.get(node)
    return isinstance(parent, ast.Call) and parent.func is node


def _method(node: ast.AST, parents: dict[ast.AST, ast.AST], allowed: set[str]) -> ast.AST | None:
    """The call `node.<one of allowed>(...)`, or None when `node` is used any other way."""
    parent = parents.get(node)
    if isinstance(parent, ast.Attribute) and parent.attr in allowed and _called(parent, parents):
        return parents[parent]
    return None


def metric_misuse(source: str, where: str) -> tuple[list[str], int]:
    """(What in this module reads a metric back, names one by string or is not a declared metric's
    write; how many writes it makes through a declared attribute)."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found: list[str] = []
    writes = 0

    def bad(node: ast.AST, why: str) -> None:
        found.append(f"{where}:{getattr(node, 'lineno', '?')}: {why}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if any(m.split(".")[0] == "prometheus_client" for m in modules):
                bad(node, "imports prometheus_client: metrics are declared and registered in edge_agent/metrics.py")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"edge_agent_\w+",
                                                                                           node.value):
            bad(node, f"names the metric {node.value!r} by string: use its attribute of Metrics")
        elif isinstance(node, ast.Attribute) and node.attr in ("get_sample_value", "collect", "generate_latest"):
            bad(node, f"{ast.unparse(node)}: reads a registry back")
        elif isinstance(node, ast.Attribute) and _names_metrics(node.value):
            spec = DECLARED.get(node.attr)
            if spec is None:
                if node.attr == "prometheus_text" and where in EXPOSITION_READERS and _called(node, parents):
                    continue
                bad(node, f"{ast.unparse(node)}: not a declared metric of Metrics (metrics are written, never read)")
                continue
            if spec.info:
                ok = _method(node, parents, {"set_only"}) is not None
            elif spec.labels:
                labelled = _method(node, parents, {"labels"})
                ok = labelled is not None and _method(labelled, parents, WRITES[spec.kind]) is not None
            else:
                ok = _method(node, parents, WRITES[spec.kind]) is not None
            if not ok:
                bad(node, f"{ast.unparse(parents.get(node, node))}: a {spec.kind} is only written "
                          f"({', '.join(sorted(WRITES[spec.kind]))}{' after .labels(...)' if spec.labels else ''})")
            writes += ok
    return found, writes


def test_code_only_writes_declared_metrics_never_reads_them_back_nor_names_them_by_string() -> None:
    """What a part counted is its own state, in its status (a report or a status line reads that);
    the registry is for the scrape. Every use of a Metrics in edge_agent/ is a write through a declared
    attribute, as its kind takes it."""
    found: list[str] = []
    writes = 0
    for path in sorted((ROOT / "edge_agent").rglob("*.py")):
        where = str(path.relative_to(ROOT))
        if where == "edge_agent/metrics.py":
            continue
        problems, n = metric_misuse(path.read_text(encoding="utf-8"), where)
        found += problems
        writes += n
    assert writes >= 60, f"the scan found {writes} metric writes: is it stale?"
    assert not found, "\n".join(found)


@pytest.mark.parametrize("code", [
    'n = self.metrics.spool_dropped.labels(reason="max_age")._value.get()',
    "lost = agent.metrics.spool_videos_lost.collect()",
    'n = agent.metrics.registry.get_sample_value("x")',
    'n = metrics.total("edge_agent_spool_videos_lost_total")',
    "c = self.metrics.frames\nc.inc()",
    "self.metrics.frames.set(3)",
    "self.metrics.spool_dropped.inc()",
    "self.metrics.frame.inc()",
    "text = self.metrics.prometheus_text()",
    "from prometheus_client import REGISTRY",
    'name = "edge_agent_frames_total"',
])
def test_the_scan_finds_each_way_of_reading_back_or_misnaming(code: str) -> None:
    problems, _ = metric_misuse(code, "edge_agent/somewhere.py")
    assert problems, code


def test_the_scan_passes_each_way_of_writing() -> None:
    code = ("self.metrics.frames.inc()\nself._metrics.frames_skipped.inc(3)\nmetrics.spool_clips.set(1)\n"
            'self.metrics.uploads.labels(result="retry").inc()\nwith self.metrics.decode_seconds.time():\n    pass\n'
            'self.metrics.info.set_only(device_id="a", site="", source_kind="file", config_sha256="x")\n')
    assert metric_misuse(code, "edge_agent/somewhere.py") == ([], 6)
