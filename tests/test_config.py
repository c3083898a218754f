"""Config errors name file:line:column, the key and what is allowed, for every kind of mistake; the
environment overrides the file; `config show` says where each value came from and masks secrets."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from edge_agent.config import Config, ConfigError, load_config, parse_config
from tests import agent_process

CASES = [
    ("clip:\n  pre_rol_s: 3\n", "c.yaml:2:3: clip.pre_rol_s: unknown key (did you mean pre_roll_s?)"),
    ("devic_id: x\n", "c.yaml:1:1: devic_id: unknown key (did you mean device_id?)"),
    ("detector:\n  rate_hz: fast\n", "c.yaml:2:12: detector.rate_hz: Input should be a valid number"),
    ("upload:\n  verify_tls: maybe\n", "c.yaml:2:15: upload.verify_tls: Input should be a valid boolean"),
    ("clip:\n  post_roll_s: -1\n", "c.yaml:2:16: clip.post_roll_s: Input should be greater than or equal to 0"),
    ("detector:\n  decoder: zbarr\n", "c.yaml:2:12: detector.decoder: Input should be 'auto', 'zxing' or 'zbar'"),
    ("clip:\n  pre_roll_s: 20\n  post_roll_s: 20\n",
     "c.yaml:2:15: clip.pre_roll_s: clip.pre_roll_s + clip.post_roll_s (40 s) exceeds clip.max_s (30 s)"),
    ("clip:\n  max_s: 300\n  pre_roll_s: 60\n  post_roll_s: 60\n",
     "c.yaml:3:15: clip.pre_roll_s: clip.pre_roll_s + clip.post_roll_s need about 124 s of video in the ring"),
    ("clip:\n  pre_roll_s: [1, 2\n", "c.yaml:3:1: YAML syntax error: expected ',' or ']'"),
    ("clip:\n pre_roll_s: 1\n  post_roll_s: 2\n", "c.yaml:3:14: YAML syntax error: mapping values are not allowed"),
    ("upload:\n  url: ftp://x\n", "c.yaml:2:8: upload.url: must start with http:// or https://"),
    ("detector:\n  cid_pattern: '([a-z'\n", "c.yaml:2:16: detector.cid_pattern: not a valid regular expression"),
]


@pytest.mark.parametrize("text,expected", CASES, ids=[c[1].split(": ")[1] + "|" + c[1][7:12] for c in CASES])
def test_each_kind_of_error_is_located(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(text, "c.yaml", env={})
    assert err.value.lines[0].startswith(expected), err.value.lines


def test_allowed_values_are_listed() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config("clip:\n  post_roll_s: -1\n", "c.yaml", env={})
    assert err.value.lines[0].endswith("(allowed: >= 0.0)")


def test_missing_source_path_is_an_error_for_run_but_not_replay() -> None:
    with pytest.raises(ConfigError, match="source.path: required for source.kind v4l2"):
        parse_config("source:\n  kind: v4l2\n", "c.yaml", env={})
    parse_config("source:\n  kind: file\n", "c.yaml", env={}, strict_source=False)


def test_environment_overrides_the_file_with_typed_values() -> None:
    env = {"EDGE_AGENT__UPLOAD__URL": "http://edge:8000/cid", "EDGE_AGENT__CLIP__PRE_ROLL_S": "3.5",
           "EDGE_AGENT__DEVICE_ID": "line-7", "EDGE_AGENT__DETECTOR__ROI": "{left: 0.1}"}
    cfg = parse_config("clip:\n  pre_roll_s: 1\n", "c.yaml", env=env, strict_source=False)
    assert cfg.upload.url == "http://edge:8000/cid" and cfg.clip.pre_roll_s == 3.5 and cfg.device_id == "line-7"
    assert cfg.detector.roi is not None and cfg.detector.roi.left == 0.1


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config("", "c.yaml", env={"EDGE_AGENT__CLIP__PRE_ROLL_S": "lots"}, strict_source=False)
    assert err.value.lines[0].startswith("environment EDGE_AGENT__CLIP__PRE_ROLL_S: clip.pre_roll_s:")
    with pytest.raises(ConfigError, match="environment EDGE_AGENT__CLIP__PRE_ROL_S: clip.pre_rol_s: unknown key"):
        parse_config("", "c.yaml", env={"EDGE_AGENT__CLIP__PRE_ROL_S": "1"}, strict_source=False)


def test_defaults_need_no_file() -> None:
    cfg = load_config(None, env={})
    assert cfg == Config(device_id=cfg.device_id)
    assert (cfg.clip.pre_roll_s, cfg.clip.post_roll_s, cfg.detector.decoder) == (2.5, 2.5, "auto")


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return agent_process.run([*args], capture_output=True, text=True,
                             env={**os.environ, **(env or {})}, check=False)


@pytest.mark.slow
def test_config_validate_exit_codes(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("clip:\n  pre_roll_s: 2\n")
    bad.write_text("clip:\n  pre_rol_s: 3\n")
    assert cli("config", "validate", str(good)).returncode == 0
    res = cli("config", "validate", str(bad))
    assert res.returncode == 78
    assert res.stderr.strip() == f"{bad}:2:3: clip.pre_rol_s: unknown key (did you mean pre_roll_s?)"


def test_config_show_gives_sources_and_masks_passwords(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("source:\n  kind: url\n  path: rtsp://admin:hunter2@cam/stream\n")
    res = cli("config", "show", "--config", str(cfg), env={"EDGE_AGENT__UPLOAD__URL": "http://e:1/cid"})
    assert res.returncode == 0, res.stderr
    assert "hunter2" not in res.stdout and "rtsp://admin:***@cam/stream" in res.stdout
    assert f'kind: "url"  # {cfg}:2' in res.stdout
    assert 'url: "http://e:1/cid"  # env EDGE_AGENT__UPLOAD__URL' in res.stdout
    assert "pre_roll_s: 2.5  # default" in res.stdout


def test_config_schema_marks_every_key_live_or_restart() -> None:
    res = cli("config", "schema")
    schema = json.loads(res.stdout)
    for name, section in schema["$defs"].items():
        for key, prop in section["properties"].items():
            assert prop.get("description"), f"{name}.{key} has no description"
            if name != "RoiConfig":
                assert prop.get("reload") in ("live", "restart"), f"{name}.{key}"
