"""The metrics endpoint over real HTTP on 127.0.0.1: Prometheus text that a Prometheus server can
parse, /healthz for liveness probes, and a server that starts and stops cleanly."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from edge_agent.metrics import Metrics
from edge_agent.service.http import WebServer
from tests import promtool

# The text exposition format 0.0.4: https://prometheus.io/docs/instrumenting/exposition_formats/
NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
SAMPLE = re.compile(rf"^(?P<name>{NAME})(?:\{{(?P<labels>{LABEL}(?:,{LABEL})*)?,?\}})? (?P<value>\S+)(?: -?\d+)?$")
TYPE = re.compile(rf"^# TYPE (?P<name>{NAME}) (?P<kind>counter|gauge|histogram|summary|untyped)$")
HELP = re.compile(rf"^# HELP (?P<name>{NAME}) .*$")


def parse_exposition(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A strict reader of the text format: fails on anything a Prometheus server would reject
    (bad names, bad escapes, a TYPE after its samples or twice, samples of one metric split up)."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    typed: dict[str, str] = {}
    finished: set[str] = set()
    current = None
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("#"):
            m = TYPE.match(line)
            if m:
                name = m["name"]
                assert name not in typed, f"second TYPE line for {name}"
                assert name not in finished and name != current, f"TYPE for {name} after its samples"
                typed[name] = m["kind"]
            elif line.startswith("# HELP"):
                assert HELP.match(line), line
            continue
        m = SAMPLE.match(line)
        assert m, f"not a valid sample line: {line!r}"
        name = m["name"]
        if name != current:
            assert name not in finished, f"samples of {name} are not grouped together"
            if current is not None:
                finished.add(current)
            current = name
        labels = tuple(
            (k, v.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\"))
            for k, v in re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m["labels"] or ""))
        value = m["value"]
        assert value in ("NaN", "+Inf", "-Inf") or re.fullmatch(r"-?\d+(\.\d+)?([eE][-+]?\d+)?", value), value
        key = (name, labels)
        assert key not in out, f"duplicate sample {key}"
        out[key] = float(value)
    return out


@pytest.fixture
def served() -> Iterator[tuple[WebServer, Metrics, dict[str, Any]]]:
    metrics = Metrics()
    state: dict[str, Any] = {"ok": True, "detail": {"last_frame_age_s": 0.1}}

    def health() -> tuple[bool, dict[str, Any]]:
        if state.get("raise"):
            raise RuntimeError("pipeline gone")
        return state["ok"], dict(state["detail"])

    server = WebServer(metrics, "127.0.0.1", 0, health)
    server.start()
    try:
        yield server, metrics, state
    finally:
        server.stop()


def test_metrics_are_served_as_prometheus_text(served: tuple[WebServer, Metrics, dict[str, Any]]) -> None:
    server, metrics, _ = served
    metrics.frames.inc(300)
    metrics.uploads.labels(result="delivered").inc()
    metrics.uploads.labels(result="retry").inc(2)
    metrics.spool_clips.set(3)
    r = requests.get(f"{server.url}/metrics", timeout=5)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = parse_exposition(r.text)
    assert samples[("edge_agent_frames_total", ())] == 300
    assert samples[("edge_agent_uploads_total", (("result", "delivered"),))] == 1
    assert samples[("edge_agent_uploads_total", (("result", "retry"),))] == 2
    assert samples[("edge_agent_spool_clips", ())] == 3
    assert "# TYPE edge_agent_frames_total counter" in r.text and "# TYPE edge_agent_spool_clips gauge" in r.text
    assert "# HELP edge_agent_frames_total " in r.text


@promtool.needs_promtool
def test_served_metrics_pass_promtool(served: tuple[WebServer, Metrics, dict[str, Any]]) -> None:
    server, metrics, _ = served
    metrics.uploads.labels(result="delivered").inc()
    metrics.upload_seconds.observe(0.2)
    promtool.check_metrics(requests.get(f"{server.url}/metrics", timeout=5).text)


def test_label_values_are_escaped_so_any_value_round_trips() -> None:
    metrics = Metrics()
    nasty = 'a "quoted" back\\slash\nnew line'
    metrics.uploads.labels(result=nasty).inc()
    samples = parse_exposition(metrics.prometheus_text())
    assert samples[("edge_agent_uploads_total", (("result", nasty),))] == 1


def test_large_counters_are_exported_exactly() -> None:
    metrics = Metrics()
    metrics.frames.inc(12_345_678)  # ~4.8 days at 30 fps
    metrics.spool_bytes.set(2_147_483_647)
    metrics.fps.set(29.97)
    samples = parse_exposition(metrics.prometheus_text())
    assert samples[("edge_agent_frames_total", ())] == 12_345_678
    assert samples[("edge_agent_spool_bytes", ())] == 2_147_483_647
    assert samples[("edge_agent_fps", ())] == 29.97


def test_healthz_answers_200_when_healthy_and_503_when_not(
        served: tuple[WebServer, Metrics, dict[str, Any]]) -> None:
    server, _, state = served
    r = requests.get(f"{server.url}/healthz", timeout=5)
    assert r.status_code == 200 and r.json() == {"status": "ok", "last_frame_age_s": 0.1}
    state["ok"], state["detail"] = False, {"last_frame_age_s": 42.0, "status": "ok?"}
    r = requests.get(f"{server.url}/healthz", timeout=5)
    assert r.status_code == 503 and r.json() == {"status": "unhealthy", "last_frame_age_s": 42.0}
    state["raise"] = True
    r = requests.get(f"{server.url}/healthz", timeout=5)
    assert r.status_code == 503 and r.json() == {"status": "error"}  # the reason is logged, not shown to anyone
    state["raise"], state["ok"] = False, False
    state["detail"] = {"last_frame_age_s": None, "source_error": "cannot open url source rtsp://admin:***@cam/"}
    r = requests.get(f"{server.url}/healthz", timeout=5)
    assert r.status_code == 503 and r.json() == {"status": "unhealthy", "last_frame_age_s": None}


def test_other_paths_are_404_and_head_has_no_body(served: tuple[WebServer, Metrics, dict[str, Any]]) -> None:
    server, _, _ = served
    assert requests.get(f"{server.url}/", timeout=5).status_code == 404
    assert requests.get(f"{server.url}/metrics/x", timeout=5).status_code == 404
    r = requests.head(f"{server.url}/metrics", timeout=5)
    assert r.status_code == 200 and r.content == b"" and int(r.headers["Content-Length"]) > 0


def test_a_silent_client_does_not_block_scrapes(served: tuple[WebServer, Metrics, dict[str, Any]]) -> None:
    server, _, _ = served
    with socket.create_connection(("127.0.0.1", server.port)):  # connects, says nothing
        started = time.monotonic()
        assert requests.get(f"{server.url}/metrics", timeout=5).status_code == 200
        assert time.monotonic() - started < 2


def test_concurrent_scrapes_while_counting_always_parse(
        served: tuple[WebServer, Metrics, dict[str, Any]]) -> None:
    server, metrics, _ = served
    stop = threading.Event()

    def count() -> None:
        i = 0
        while not stop.is_set():
            metrics.frames.inc()
            metrics.uploads.labels(result=("delivered", "retry", "quarantined")[i % 3]).inc()
            metrics.spool_clips.set(i % 7)
            i += 1

    worker = threading.Thread(target=count, daemon=True)
    worker.start()
    errors: list[BaseException] = []

    def scrape() -> None:
        try:
            last = -1.0
            with requests.Session() as s:
                for _ in range(20):
                    value = parse_exposition(s.get(f"{server.url}/metrics", timeout=5).text)[
                        ("edge_agent_frames_total", ())]
                    assert value >= last  # a counter never goes backwards
                    last = value
        except BaseException as exc:  # re-raised in the test thread
            errors.append(exc)

    scrapers = [threading.Thread(target=scrape) for _ in range(3)]
    for t in scrapers:
        t.start()
    for t in scrapers:
        t.join(30)
    stop.set()
    worker.join(5)
    assert not errors, errors[0]


def test_stop_closes_the_port_and_is_safe_before_start_and_twice() -> None:
    never_started = WebServer(Metrics(), "127.0.0.1", 0)
    started = time.monotonic()
    never_started.stop()  # must not wait for a serve loop that never ran
    assert time.monotonic() - started < 1
    server = WebServer(Metrics(), "127.0.0.1", 0)
    server.start()
    port = server.port
    assert port > 0 and requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 200
    server.stop()
    server.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_a_port_in_use_fails_at_construction_naming_it() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
            WebServer(Metrics(), "127.0.0.1", port)

