"""The messages a technician reads after a typo in the YAML or an environment variable: each points at
the line and column where the mistake is (not where PyYAML noticed it), says what it is in plain
words, and `edge-agent config validate` exits 78 with it."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from edge_agent.config import ConfigError, parse_config
from tests import agent_process
from tests.hostile_yaml import ALIAS_BOMB, ALIAS_BOMB_AT, NESTED_5000, RECURSIVE_ALIAS

ROOT = Path(__file__).resolve().parent.parent

# A config a technician would edit; line 9 lost its colon.
MISSING_COLON_LINE_9 = """\
device_id: line-1
source:
  kind: v4l2
  path: /dev/video0
  stall_s: 10
detector:
  decoder: zxing
clip:
  foo
  pre_roll_s: 2
"""


def errors(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(text, "c.yaml", env=env or {}, strict_source=False)
    return err.value.lines


def validate(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`edge-agent config validate FILE` as the technician runs it, in its own process."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT")}
    return agent_process.run(["config", "validate", str(path)],
                             capture_output=True, text=True, env={**clean, **(env or {})}, check=False, timeout=60)


# --- 1. a key without its colon ----------------------------------------------------------------------

MISSING_COLON = [
    # followed by more keys: PyYAML reads 'foo pre_roll_s' as one text and fails on line 10
    (MISSING_COLON_LINE_9, "c.yaml:9:3: line 9 has no ':' after 'foo' (a key needs 'key: value')"),
    ("source:\n  kind v4l2\n  path: /dev/video0\n",
     "c.yaml:2:3: line 2 has no ':' after 'kind' (a key needs 'key: value')"),
    ("device_id x\nsource:\n  kind: v4l2\n",
     "c.yaml:1:1: line 1 has no ':' after 'device_id' (a key needs 'key: value')"),
    ("clip\n  pre_roll_s: 2\n", "c.yaml:1:1: line 1 has no ':' after 'clip' (a key needs 'key: value')"),
    # the last key of a block, the last line of the file
    ("clip:\n  pre_roll_s: 2\n  post_roll_s 3\nupload:\n  url: http://e/cid\n",
     "c.yaml:3:3: line 3 has no ':' after 'post_roll_s' (a key needs 'key: value')"),
    ("source:\n  kind: v4l2\ndevice_id x\n",
     "c.yaml:3:1: line 3 has no ':' after 'device_id' (a key needs 'key: value')"),
    ("device_id x\n", "c.yaml:1:1: line 1 has no ':' after 'device_id' (a key needs 'key: value')"),
    # a comment after the key changes PyYAML's complaint, not ours
    ("clip:\n  foo # was pre_roll_s\n  post_roll_s: 2\n",
     "c.yaml:2:3: line 2 has no ':' after 'foo' (a key needs 'key: value')"),
    # valid YAML (the section holds the text 'pre_roll_s 2'), still a missing colon
    ("clip:\n  pre_roll_s 2\n", "c.yaml:2:3: line 2 has no ':' after 'pre_roll_s' (a key needs 'key: value')"),
    ("clip:\n  encoders:\n    - libx264\n  preset veryfast\n  crf: 20\n",
     "c.yaml:4:3: line 4 has no ':' after 'preset' (a key needs 'key: value')"),
]


@pytest.mark.parametrize("text,expected", MISSING_COLON, ids=[e.split(": ")[0] for _, e in MISSING_COLON])
def test_a_missing_colon_is_reported_on_its_own_line(text: str, expected: str) -> None:
    assert errors(text) == [expected]


def test_config_validate_reports_the_missing_colon_and_exits_78(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(MISSING_COLON_LINE_9)
    res = validate(cfg)
    assert (res.returncode, res.stdout) == (78, "")
    assert res.stderr == f"{cfg}:9:3: line 9 has no ':' after 'foo' (a key needs 'key: value')\n"


def test_a_line_indented_off_is_not_called_a_missing_colon() -> None:
    assert errors("clip:\n pre_roll_s: 1\n  post_roll_s: 2\n") == [
        "c.yaml:3:14: YAML syntax error: mapping values are not allowed here (line 3 is indented deeper than "
        "line 2, so it reads as part of line 2's value: keys of one section must line up)"]
    assert errors("clip:\n  pre_roll_s: 1\n post_roll_s: 2\n") == [
        "c.yaml:3:2: YAML syntax error: expected <block end>, but found '<block mapping start>' (while parsing a "
        "block mapping at line 1, column 1) (line 3 is indented less than line 2: keys of one section must line up)"]


def test_a_section_given_a_value_says_it_wants_keys_under_it() -> None:
    assert errors("clip: fast\n") == [
        "c.yaml:1:7: clip: a section: expected indented 'key: value' lines under it, got 'fast'"]


def test_a_section_with_every_key_commented_out_takes_its_defaults() -> None:
    cfg = parse_config("clip:\n  # pre_roll_s: 4\nupload:\n", "c.yaml", env={}, strict_source=False)
    assert (cfg.clip.pre_roll_s, cfg.upload.url) == (2.5, None)


# --- 2. tabs -------------------------------------------------------------------------------------------

TABS = [
    ("source:\n\tkind: v4l2\n", "c.yaml:2:1: tabs are not allowed in YAML, indent with spaces"),
    ("source:\n  \tkind: v4l2\n", "c.yaml:2:3: tabs are not allowed in YAML, indent with spaces"),
    ("source:\n  kind: v4l2\n\tpath: /dev/video0\n", "c.yaml:3:1: tabs are not allowed in YAML, indent with spaces"),
    ("clip:\n  encoders:\n  -\tlibx264\n", "c.yaml:3:4: tabs are not allowed in YAML, indent with spaces"),
    ("source:\n  kind:\tv4l2\n", "c.yaml:2:8: tabs are not allowed in YAML, use spaces"),
    ("source:\n  kind: v4l2\t# usb\n", "c.yaml:2:13: tabs are not allowed in YAML, use spaces"),
]


@pytest.mark.parametrize("text,expected", TABS, ids=[e.split(": ")[0] for _, e in TABS])
def test_a_tab_is_named_at_its_line_and_column(text: str, expected: str) -> None:
    assert errors(text) == [expected]


def test_config_validate_names_the_tab(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("device_id: a\nsource:\n  kind: v4l2\n\tpath: /dev/video0\n")
    res = validate(cfg)
    assert res.returncode == 78
    assert res.stderr == f"{cfg}:4:1: tabs are not allowed in YAML, indent with spaces\n"


def test_a_tab_inside_quotes_is_text_not_an_error() -> None:
    cfg = parse_config('source:\n  command: "a\tb"\n', "c.yaml", env={}, strict_source=False)
    assert cfg.source.command == "a\tb"


# --- 3. numbers where text is expected ---------------------------------------------------------------


def test_ffmpeg_options_take_unquoted_numbers_as_written() -> None:
    cfg = parse_config("source:\n  kind: v4l2\n  path: /dev/video0\n  options:\n    framerate: 30\n"
                       "    video_size: 1280x720\n    start: 1:30\n    rate: 29.970\n    reconnect: yes\n",
                       "c.yaml", env={})
    # as written, not as YAML 1.1 would read them (1:30 is 90 there, 29.970 is 29.97, yes is True)
    assert cfg.source.options == {"framerate": "30", "video_size": "1280x720", "start": "1:30", "rate": "29.970",
                                  "reconnect": "yes"}


def test_text_keys_keep_digits_as_written() -> None:
    cfg = parse_config("device_id: 0042\nupload:\n  token_file: 7\n", "c.yaml", env={}, strict_source=False)
    assert (cfg.device_id, cfg.upload.token_file) == ("0042", "7")  # YAML alone reads 0042 as octal 34


def test_environment_text_keys_and_options_take_the_text_given() -> None:
    env = {"EDGE_AGENT__DEVICE_ID": "0042", "EDGE_AGENT__SOURCE__OPTIONS__FRAMERATE": "30",
           "EDGE_AGENT__CLIP__PRE_ROLL_S": "3.5"}
    cfg = parse_config("", "c.yaml", env=env, strict_source=False)
    assert (cfg.device_id, cfg.source.options, cfg.clip.pre_roll_s) == ("0042", {"framerate": "30"}, 3.5)
    cfg = parse_config("", "c.yaml", env={"EDGE_AGENT__SOURCE__OPTIONS": "{framerate: 30, probe: true}"},
                       strict_source=False)
    assert cfg.source.options == {"framerate": "30", "probe": "1"}


def test_an_option_without_a_value_is_refused_in_plain_words() -> None:
    assert errors("source:\n  options:\n    framerate:\n") == [
        "c.yaml:3:15: source.options.framerate: Input should be a valid string, got an empty value (allowed: text)"]


def test_the_usb_example_framerate_can_be_edited_to_a_plain_number() -> None:
    """The stock configs are copied and edited: changing the frame rate to 15 must not need quotes."""
    text = (ROOT / "configs" / "usb-webcam.yaml").read_text()
    edited = re.sub(r"(?m)^(\s+framerate:) \S+", r"\1 15", text)
    assert edited != text
    assert parse_config(edited, "usb-webcam.yaml", env={}).source.options["framerate"] == "15"


def test_the_schema_editors_check_against_accepts_every_example_option() -> None:
    """configs/*.yaml point yaml-language-server at docs/config.schema.json: it must not flag what loads."""
    schema = json.loads((ROOT / "docs" / "config.schema.json").read_text())
    allowed = schema["$defs"]["SourceConfig"]["properties"]["options"]["additionalProperties"]["type"]
    json_type = {str: "string", int: "number", float: "number", bool: "boolean"}
    seen = 0
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        options = (yaml.safe_load(path.read_text()).get("source") or {}).get("options") or {}
        for key, value in options.items():
            assert json_type[type(value)] in allowed, f"{path.name}: source.options.{key}: {value!r}"
            seen += 1
    assert seen and "number" in allowed


# --- 4. a key given twice ------------------------------------------------------------------------------


def test_a_key_given_twice_is_refused_with_both_lines() -> None:
    text = "device_id: a\nsource:\n  kind: v4l2\n  path: /dev/video0\n  stall_s: 10\n\n  path: /dev/video1\n"
    assert errors(text) == ["c.yaml:7:3: source.path given twice (first at line 4)"]


def test_every_repeat_is_listed_at_every_level() -> None:
    text = "clip:\n  crf: 20\n  crf: 22\n  crf: 24\nclip:\n  preset: fast\nsource:\n  options:\n" \
           "    framerate: 30\n    framerate: '25'\n"
    assert errors(text) == ["c.yaml:3:3: clip.crf given twice (first at line 2)",
                            "c.yaml:4:3: clip.crf given twice (first at line 2)",
                            "c.yaml:5:1: clip given twice (first at line 1)",
                            "c.yaml:10:5: source.options.framerate given twice (first at line 9)"]


def test_config_validate_refuses_a_duplicate_key(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("upload:\n  url: http://a:8000/cid\nhttp:\n  port: 9108\nupload:\n  url: http://b:8000/cid\n")
    res = validate(cfg)
    assert res.returncode == 78
    assert res.stderr == f"{cfg}:5:1: upload given twice (first at line 1)\n"


# --- 5. environment variables ------------------------------------------------------------------------

ENV = [
    ("EDGE_AGENT__UPLOAD__URLL",
     "environment EDGE_AGENT__UPLOAD__URLL: upload.urll: unknown key (did you mean EDGE_AGENT__UPLOAD__URL?)"),
    ("EDGE_AGENT__UPLOAD_URL",  # one underscore between section and key
     "environment EDGE_AGENT__UPLOAD_URL: upload_url: unknown key (did you mean EDGE_AGENT__UPLOAD__URL?)"),
    ("EDGE_AGENT__UPLOD__URL",  # the section misspelt: blamed on the variable, not on the file
     "environment EDGE_AGENT__UPLOD__URL: uplod: unknown key (did you mean EDGE_AGENT__UPLOAD__URL?)"),
    ("EDGE_AGENT__DEVICEID", "environment EDGE_AGENT__DEVICEID: deviceid: unknown key "
                             "(did you mean EDGE_AGENT__DEVICE_ID?)"),
    ("EDGE_AGENT__CLIP__ZZZ", "environment EDGE_AGENT__CLIP__ZZZ: clip.zzz: unknown key (allowed: pre_roll_s, "
                              "post_roll_s, extend_while_in_view, max_s, encoders, width, height, fps, crf, preset, "
                              "ring_max_bytes)"),
]


@pytest.mark.parametrize("var,expected", ENV, ids=[v for v, _ in ENV])
def test_an_unknown_environment_key_suggests_the_variable_meant(var: str, expected: str) -> None:
    assert errors("clip:\n  pre_roll_s: 2\n", env={var: "http://edge:8000/cid"}) == [expected]


def test_config_validate_suggests_the_environment_variable(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("device_id: a\n")
    res = validate(cfg, env={"EDGE_AGENT__UPLOAD__URLL": "http://edge:8000/cid"})
    assert res.returncode == 78
    assert res.stderr == ("environment EDGE_AGENT__UPLOAD__URLL: upload.urll: unknown key "
                          "(did you mean EDGE_AGENT__UPLOAD__URL?)\n")


# --- 6. a document past the bounds: aliases, depth, size ---------------------------------------------

BOUNDS = [
    (ALIAS_BOMB, f"c.yaml:{ALIAS_BOMB_AT}: the document stands for more than 10000 values here (aliases expanded): "
                 "a config has a few hundred; write the values out, or use fewer aliases"),
    (RECURSIVE_ALIAS, "c.yaml:1:8: alias *a repeats the collection it is in (a recursive alias, which never ends): "
                     "write the values out"),
    (NESTED_5000, "c.yaml:1:35: nested more than 32 levels deep (a config's sections are "
                                             "at most four): is it the right file?"),
    ("".join(f"{'  ' * i}k{i}:\n" for i in range(40)), "c.yaml:33:65: nested more than 32 levels deep (a config's "
                                                       "sections are at most four): is it the right file?"),
]


@pytest.mark.parametrize(("text", "expected"), BOUNDS, ids=["alias-bomb", "recursive-alias", "flow-5000-deep",
                                                             "block-40-deep"])
def test_a_document_past_the_bounds_is_refused_where_it_crosses_them(text: str, expected: str) -> None:
    """Refused before anything is built from it (a scan of the parser's events): not the memory of a
    billion values, not a RecursionError as an internal error."""
    assert errors(text) == [expected]


def test_an_alias_bomb_in_an_environment_value_is_refused_by_its_variable() -> None:
    bomb = "{" + ", ".join(ALIAS_BOMB.splitlines()) + "}"
    assert errors("device_id: a\n", env={"EDGE_AGENT__SOURCE__OPTIONS": bomb}) == [
        "environment EDGE_AGENT__SOURCE__OPTIONS:1:171: the document stands for more than 10000 values here "
        "(aliases expanded): a config has a few hundred; write the values out, or use fewer aliases"]


def test_aliases_within_the_bounds_still_work() -> None:
    cfg = parse_config("source:\n  options: {a: &v '7', b: *v}\n", "c.yaml", env={}, strict_source=False)
    assert cfg.source.options == {"a": "7", "b": "7"}


@pytest.mark.slow
@pytest.mark.parametrize("what", ["alias-bomb", "nested-5000", "dev-zero", "over-1-MiB"])
def test_config_validate_refuses_a_document_past_the_bounds_with_78_at_once(tmp_path: Path, what: str) -> None:
    cfg = tmp_path / "config.yaml"
    text = {"alias-bomb": ALIAS_BOMB, "nested-5000": NESTED_5000,
            "over-1-MiB": "device_id: a\n" + "# padding\n" * 120_000}.get(what)
    if text is None:
        cfg = Path("/dev/zero")  # named by mistake: it never ends
    else:
        cfg.write_text(text)
    res = validate(cfg)
    assert res.returncode == 78, res.stderr
    line, = res.stderr.splitlines()
    want = {"alias-bomb": f"{cfg}:{ALIAS_BOMB_AT}: the document stands for more than 10000 values",
            "nested-5000": f"{cfg}:1:35: nested more than 32 levels deep",
            "dev-zero": "/dev/zero: larger than a config may be (1 MiB): is it the right file?",
            "over-1-MiB": f"{cfg}: larger than a config may be (1 MiB)"}[what]
    assert line.startswith(want), line


# --- 7. device_id and site: printable text, as they go into every log line and metric label ------------

PRINTABLE = ("only printable characters (letters, digits, spaces, punctuation; no newline, tab or other control "
             "character)")


@pytest.mark.parametrize(("value", "shown"), [("cam\n<3>forged: x", "'\\n' at character 4"),
                                              ("cam\nforged", "'\\n' at character 4"),
                                              ("cam\x1b[31m", "'\\x1b' at character 4"),
                                              ("cam\u202egnp.exe", "'\\u202e' at character 4")],
                         ids=["log-line", "folded-by-yaml", "escape", "bidi-override"])
def test_a_device_id_from_the_environment_with_a_control_character_is_refused_by_its_variable(
        value: str, shown: str) -> None:
    """A newline in EDGE_AGENT__DEVICE_ID would forge a log line and a metric label: refused, naming the
    variable, the key, what is allowed and where; YAML folding the newline into a space would hide it."""
    assert errors("site: a\n", env={"EDGE_AGENT__DEVICE_ID": value}) == [
        f"environment EDGE_AGENT__DEVICE_ID: device_id: {PRINTABLE}: {shown}"]


def test_a_device_id_or_site_in_the_file_with_a_control_character_is_refused_at_its_line() -> None:
    assert errors('device_id: "line\\t3"\nsite: "hall\\n2"\n') == [
        f"c.yaml:1:12: device_id: {PRINTABLE}: '\\t' at character 5, got 'line\\t3'",
        f"c.yaml:2:7: site: {PRINTABLE}: '\\n' at character 5, got 'hall\\n2'"]


def test_device_ids_and_sites_with_spaces_and_any_script_stay_valid_within_200_characters() -> None:
    """The rule refuses what forges lines, not what devices are called: 'Halle 2 – Linie 3', 'カメラ1'
    (the reference receiver files ids that are not plain path segments under unknown-device, keeping the id)."""
    cfg = parse_config("device_id: Halle 2 – Linie 3\nsite: 第二工場\n", "c.yaml", env={}, strict_source=False)
    assert (cfg.device_id, cfg.site) == ("Halle 2 – Linie 3", "第二工場")
    from_env = parse_config("", "c.yaml", env={"EDGE_AGENT__DEVICE_ID": "カメラ1"}, strict_source=False)
    assert from_env.device_id == "カメラ1"
    # empty is the host name, as the packaged config.yaml says (`device_id: ""  # empty: the host name`)
    assert parse_config("device_id: ''\n", "c.yaml", env={}, strict_source=False).device_id == socket.gethostname()
    assert errors(f"device_id: {'x' * 201}\n")[0].startswith("c.yaml:1:12: device_id: String should have at most "
                                                            "200 characters")


@pytest.mark.slow
def test_config_validate_refuses_a_newline_in_the_device_id_variable_with_78(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("site: plant-a\n")
    res = validate(cfg, env={"EDGE_AGENT__DEVICE_ID": "cam-1\n<3>edge_agent: forged line"})
    assert res.returncode == 78
    assert res.stderr == f"environment EDGE_AGENT__DEVICE_ID: device_id: {PRINTABLE}: '\\n' at character 6\n"
