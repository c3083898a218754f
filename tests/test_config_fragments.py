"""Fleet configuration: the `*.yaml` fragments in the config's `.d` folder merge over it in name order
(mappings key by key, a later file wins), before the environment; an error names the fragment's own
file and line; `config show` says which file set each value; `config validate --fragment` checks a
candidate before it is put in place."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from edge_agent.config import ConfigError, config_sha256, config_sources, fragment_dir, load_config
from tests import agent_process

MAIN = ("device_id: line4-cam1\nsource:\n  kind: file\n  path: a.mp4\nclip:\n  pre_roll_s: 1\n  post_roll_s: 2\n"
        "upload:\n  url: http://edge:8000/cid\n")


def setup(tmp_path: Path, **frags: str) -> Path:
    main = tmp_path / "config.yaml"
    main.write_text(MAIN)
    d = tmp_path / "config.d"
    d.mkdir()
    for name, text in frags.items():
        (d / name.replace("_", "-").replace("-yaml", ".yaml")).write_text(text)
    return main


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT")}
    return agent_process.run([*args], capture_output=True, text=True,
                             timeout=60, env={**clean, **(env or {})})


def test_fragments_merge_over_the_main_file_in_name_order_and_the_environment_wins(tmp_path: Path) -> None:
    main = setup(tmp_path,
                 **{"20-device.yaml": "clip:\n  pre_roll_s: 1.5\n",
                    "10-fleet.yaml": "site: plant-a\nclip:\n  pre_roll_s: 3\ndetector:\n  cooldown_s: 7\n"})
    cfg = load_config(main, env={})
    assert cfg.clip.pre_roll_s == 1.5  # 20-device after 10-fleet
    assert cfg.clip.post_roll_s == 2  # the main file's key beside it survives the merge of clip:
    assert cfg.detector.cooldown_s == 7 and cfg.site == "plant-a"
    assert cfg.upload.url == "http://edge:8000/cid" and cfg.device_id == "line4-cam1"
    cfg = load_config(main, env={"EDGE_AGENT__CLIP__PRE_ROLL_S": "0.5"})
    assert cfg.clip.pre_roll_s == 0.5


def test_only_yaml_files_join_not_backups_leftovers_or_hidden_ones(tmp_path: Path) -> None:
    main = setup(tmp_path)
    d = tmp_path / "config.d"
    for name in ("10-fleet.yaml~", "10-fleet.yaml.dpkg-old", ".10-fleet.yaml", "10-fleet.yaml.new", "10-fleet.yml"):
        (d / name).write_text("clip:\n  pre_rol_s: 9\n")  # would be refused if read
    assert load_config(main, env={}).clip.pre_roll_s == 1


@pytest.mark.parametrize(("make", "says"), [
    (lambda p: p.mkdir(), "a folder, not a file (only files named *.yaml are config fragments): move it out of "
                          "the folder"),
    (lambda p: p.symlink_to("/srv/fleet/gone.yaml"), "a symbolic link to /srv/fleet/gone.yaml, which does not "
                                                      "exist: restore its target, or remove the link"),
    (lambda p: os.mkfifo(p), "not a regular file (a device, a pipe or a socket): only files are config fragments"),
], ids=["folder", "dangling-link", "fifo"])
def test_a_fragment_name_that_is_no_readable_file_refuses_the_config_in_one_line(tmp_path: Path, make, says) -> None:
    """Named *.yaml, it was meant as config (a copy that made a folder, a link whose target went): the
    config is refused as for an unreadable fragment, never run without it unseen; a pipe is not read
    (it would never end)."""
    main = setup(tmp_path)
    frag = tmp_path / "config.d" / "10-fleet.yaml"
    make(frag)
    with pytest.raises(ConfigError) as err:
        load_config(main, env={})
    assert err.value.lines == [f"{frag}: cannot read config fragment: {says}"]
    res = cli("config", "validate", str(main))
    assert res.returncode == 78 and res.stderr.strip() == f"{frag}: cannot read config fragment: {says}", res.stderr


def test_the_fragment_folder_is_named_after_the_config_file() -> None:
    assert fragment_dir("/etc/edge-agent/config.yaml") == Path("/etc/edge-agent/config.d")
    assert fragment_dir("/etc/edge-agent/cam2.yaml") == Path("/etc/edge-agent/cam2.d")
    assert fragment_dir("bench.yml") == Path("bench.d")


def test_an_error_in_a_fragment_names_the_fragment_file_and_line(tmp_path: Path) -> None:
    main = setup(tmp_path, **{"10-fleet.yaml": "detector:\n  cooldown_s: 2\n  rate_hz: fast\n"})
    with pytest.raises(ConfigError) as err:
        load_config(main, env={})
    frag = tmp_path / "config.d" / "10-fleet.yaml"
    assert err.value.lines == [f"{frag}:3:12: detector.rate_hz: Input should be a valid number, unable to parse "
                               "string as a number, got 'fast' (allowed: a number)"]
    # a key the fragment overrides is located in the fragment, not in the main file that set it first
    (frag).write_text("upload:\n  url: edge:8000\n")
    with pytest.raises(ConfigError) as err:
        load_config(main, env={})
    assert err.value.lines[0].startswith(f"{frag}:2:8: upload.url: must start with http://")


def test_syntax_errors_in_several_fragments_are_all_reported_with_their_files(tmp_path: Path) -> None:
    main = setup(tmp_path, **{"10-a.yaml": "clip:\n\tpre_roll_s: 2\n", "20-b.yaml": "clip:\n  pre_rol_s: 2\n",
                              "30-c.yaml": "site x\n"})
    d = tmp_path / "config.d"
    with pytest.raises(ConfigError) as err:
        load_config(main, env={})
    assert err.value.lines == [f"{d / '10-a.yaml'}:2:1: tabs are not allowed in YAML, indent with spaces",
                               f"{d / '30-c.yaml'}:1:1: line 1 has no ':' after 'site' (a key needs 'key: value')"]
    (d / "10-a.yaml").unlink()
    (d / "30-c.yaml").unlink()
    with pytest.raises(ConfigError) as err:
        load_config(main, env={})
    assert err.value.lines == [f"{d / '20-b.yaml'}:2:3: clip.pre_rol_s: unknown key (did you mean pre_roll_s?)"]


def test_sources_name_the_last_file_that_set_each_key(tmp_path: Path) -> None:
    main = setup(tmp_path, **{"10-fleet.yaml": "site: plant-a\nclip:\n  pre_roll_s: 3\n"})
    where = config_sources(main, env={"EDGE_AGENT__UPLOAD__URL": "http://other:8000/cid"})
    assert where["clip.pre_roll_s"] == f"{tmp_path / 'config.d' / '10-fleet.yaml'}:3"
    assert where["clip.post_roll_s"] == f"{main}:7"
    assert where["site"] == f"{tmp_path / 'config.d' / '10-fleet.yaml'}:1"
    assert where["upload.url"] == "env EDGE_AGENT__UPLOAD__URL"
    assert "detector.cooldown_s" not in where  # a default


def test_config_show_prints_each_values_origin_and_the_config_hash(tmp_path: Path) -> None:
    main = setup(tmp_path, **{"10-fleet.yaml": "site: plant-a\nclip:\n  pre_roll_s: 3\n"})
    frag = tmp_path / "config.d" / "10-fleet.yaml"
    res = cli("config", "show", "--config", str(main), env={"EDGE_AGENT__DETECTOR__RATE_HZ": "4"})
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == f"# {main} + {frag}"
    assert f'site: "plant-a"  # {frag}:1' in lines
    assert f"  pre_roll_s: 3.0  # {frag}:3" in lines
    assert f"  post_roll_s: 2.0  # {main}:7" in lines
    assert "  rate_hz: 4.0  # env EDGE_AGENT__DETECTOR__RATE_HZ" in lines
    assert "  cooldown_s: 5.0  # default" in lines
    digest = config_sha256(load_config(main, env={"EDGE_AGENT__DETECTOR__RATE_HZ": "4"}))
    assert lines[1] == f"# config_sha256: {digest}"
    shown = json.loads(cli("config", "show", "--json", "--config", str(main)).stdout)
    assert shown["sources"]["clip.pre_roll_s"] == f"{frag}:3" and shown["fragments"] == [str(frag)]
    assert shown["config_sha256"] != digest  # without the environment's rate_hz the effective config differs


def test_the_host_name_is_the_device_id_unless_one_is_set(tmp_path: Path) -> None:
    main = tmp_path / "config.yaml"
    main.write_text("source: {kind: file, path: a.mp4}\n")
    assert load_config(main, env={}).device_id == socket.gethostname()
    (tmp_path / "config.d").mkdir()
    (tmp_path / "config.d" / "50-me.yaml").write_text("device_id: line4-cam1\n")
    assert load_config(main, env={}).device_id == "line4-cam1"


@pytest.mark.slow  # six runs of the command
def test_validate_checks_a_candidate_fragment_in_its_place_before_it_is_put_there(tmp_path: Path) -> None:
    main = setup(tmp_path, **{"10-fleet.yaml": "clip:\n  pre_roll_s: 3\n"})
    cand = tmp_path / "upload-tmp"
    cand.write_text("clip:\n  post_roll_s: 2\n  pre_rol_s: 1\n")
    res = cli("config", "validate", "--config", str(main), "--fragment", str(cand), "--as", "50-push.yaml")
    assert res.returncode == 78
    assert res.stderr == f"{cand}:3:3: clip.pre_rol_s: unknown key (did you mean pre_roll_s?)\n"
    # merged in its place: 05- sorts before 10-fleet, whose pre_roll_s wins; 50- after it
    cand.write_text("clip:\n  pre_roll_s: 4\n  max_s: 5\n")
    res = cli("config", "validate", "--config", str(main), "--fragment", str(cand), "--as", "05-early.yaml")
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"ok: {main} + 2 fragments\n"
    res = cli("config", "validate", "--config", str(main), "--fragment", str(cand), "--as", "50-late.yaml")
    assert res.returncode == 78 and "exceeds clip.max_s (5 s)" in res.stderr
    assert not (tmp_path / "config.d" / "50-late.yaml").exists()
    res = cli("config", "validate", "--config", str(main), "--fragment", str(cand), "--as", "50-late.yml")
    assert res.returncode == 64 and "a fragment is a NAME.yaml" in res.stderr
    res = cli("config", "validate", str(main))
    assert res.returncode == 0 and res.stdout == f"ok: {main} + 1 fragment\n"


def test_the_config_hash_is_the_same_for_devices_with_the_same_settings_and_changes_with_any(tmp_path: Path) -> None:
    main = setup(tmp_path)
    one = load_config(main, env={"EDGE_AGENT__DEVICE_ID": "line4-cam1"})
    two = load_config(main, env={"EDGE_AGENT__DEVICE_ID": "line4-cam2"})
    assert config_sha256(one) == config_sha256(two)  # device_id is a label of its own
    (tmp_path / "config.d" / "10-fleet.yaml").write_text("spool:\n  max_age_s: 86400\n")
    assert config_sha256(load_config(main, env={"EDGE_AGENT__DEVICE_ID": "line4-cam1"})) != config_sha256(one)
