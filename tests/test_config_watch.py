"""Saving the config reloads it however the editor writes, once per burst; a bad edit keeps the old
config; live and restart-only keys are told apart."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from edge_agent.config import Config, parse_config
from edge_agent.service.reload import ConfigWatcher, classify_changes

SRC = "source: {kind: file, path: x.mp4}\n"


class Collector:
    def __init__(self) -> None:
        self.configs: list[Config] = []
        self.errors: list[list[str]] = []
        self.event = threading.Event()

    def ok(self, cfg: Config) -> None:
        self.configs.append(cfg)
        self.event.set()

    def bad(self, lines: list[str]) -> None:
        self.errors.append(lines)
        self.event.set()

    def wait(self, timeout: float = 5.0) -> None:
        assert self.event.wait(timeout), "no reload"
        time.sleep(0.3)  # any straggler reload would land now
        self.event.clear()


def watch(tmp_path: Path) -> tuple[Path, Collector, ConfigWatcher]:
    path = tmp_path / "config.yaml"
    path.write_text("clip:\n  pre_roll_s: 1\n" + SRC)
    c = Collector()
    w = ConfigWatcher(path, c.ok, c.bad, debounce_s=0.2)
    w.start()
    return path, c, w


def test_in_place_write_reloads(tmp_path: Path) -> None:
    path, c, w = watch(tmp_path)
    try:
        path.write_text("clip:\n  pre_roll_s: 2\n" + SRC)
        c.wait()
        assert [cfg.clip.pre_roll_s for cfg in c.configs] == [2]
    finally:
        w.stop()


def test_atomic_rename_and_vim_style_saves_reload(tmp_path: Path) -> None:
    path, c, w = watch(tmp_path)
    try:
        tmp = tmp_path / ".config.yaml.tmp"
        tmp.write_text("clip:\n  pre_roll_s: 3\n" + SRC)
        os.replace(tmp, path)
        c.wait()
        # vim: rename the original to a backup, write a new file, delete the backup
        os.rename(path, tmp_path / "config.yaml~")
        path.write_text("clip:\n  pre_roll_s: 4\n" + SRC)
        (tmp_path / "config.yaml~").unlink()
        c.wait()
        assert [cfg.clip.pre_roll_s for cfg in c.configs] == [3, 4]
    finally:
        w.stop()


def test_burst_of_writes_gives_one_reload_and_unchanged_content_none(tmp_path: Path) -> None:
    path, c, w = watch(tmp_path)
    try:
        for i in range(10):
            path.write_text(f"clip:\n  pre_roll_s: 1.{i}\n" + SRC)
            time.sleep(0.01)
        c.wait()
        assert [cfg.clip.pre_roll_s for cfg in c.configs] == [1.9]
        path.write_text("clip:\n  pre_roll_s: 1.9\n" + SRC)  # same content: no reload
        time.sleep(0.6)
        assert len(c.configs) == 1
    finally:
        w.stop()


def test_bad_edit_reports_located_errors_and_does_not_apply(tmp_path: Path) -> None:
    path, c, w = watch(tmp_path)
    try:
        path.write_text("clip:\n  pre_rol_s: 2\n" + SRC)
        c.wait()
        assert c.configs == []
        assert c.errors[0][0].endswith("config.yaml:2:3: clip.pre_rol_s: unknown key (did you mean pre_roll_s?)")
    finally:
        w.stop()


def test_changes_are_classified_live_or_restart() -> None:
    old = parse_config("source:\n  kind: file\n  path: a.mp4\n", env={})
    new = parse_config("source:\n  kind: file\n  path: b.mp4\nclip:\n  pre_roll_s: 3\ndetector:\n  decoder: zbar\n"
                       "spool:\n  max_bytes: 10000000\n  dir: /elsewhere\n", env={})
    live, restart = classify_changes(old, new)
    assert live == ["clip.pre_roll_s", "detector.decoder", "spool.max_bytes"]
    assert restart == ["source.path", "spool.dir"]


def test_a_fragment_written_renamed_in_or_removed_reloads(tmp_path: Path) -> None:
    (tmp_path / "config.d").mkdir()
    path, c, w = watch(tmp_path)
    frag = tmp_path / "config.d" / "10-fleet.yaml"
    try:
        frag.write_text("clip:\n  pre_roll_s: 2\n")
        c.wait()
        staged = tmp_path / "config.d" / ".10-fleet.yaml.tmp"  # as Ansible's copy puts a file in place
        staged.write_text("clip:\n  pre_roll_s: 3\n")
        os.replace(staged, frag)
        c.wait()
        frag.unlink()
        c.wait()
        assert [cfg.clip.pre_roll_s for cfg in c.configs] == [2, 3, 1]
        (tmp_path / "config.d" / "10-fleet.yaml~").write_text("clip:\n  pre_roll_s: 4\n")  # not a fragment
        time.sleep(0.6)
        assert len(c.configs) == 3
    finally:
        w.stop()


def test_a_fragment_folder_made_after_start_is_watched_and_its_errors_reported(tmp_path: Path) -> None:
    path, c, w = watch(tmp_path)
    try:
        (tmp_path / "config.d").mkdir()
        time.sleep(0.5)  # the folder's own event, an unchanged config: no reload
        assert c.configs == [] and c.errors == []
        (tmp_path / "config.d" / "10-fleet.yaml").write_text("clip:\n  pre_rol_s: 2\n")
        c.wait()
        assert c.errors == [[f"{tmp_path / 'config.d' / '10-fleet.yaml'}:2:3: clip.pre_rol_s: unknown key "
                             "(did you mean pre_roll_s?)"]]
    finally:
        w.stop()


def test_a_fragment_the_agent_cannot_read_is_reported_not_skipped(tmp_path: Path) -> None:
    (tmp_path / "config.d").mkdir()
    path, c, w = watch(tmp_path)
    frag = tmp_path / "config.d" / "10-fleet.yaml"
    try:
        frag.write_text("clip:\n  pre_roll_s: 2\n")
        c.wait()
        # a regular file that even root cannot read (the tests run as root, where chmod 0 would not
        # stop a read): the process' own memory at offset 0, EIO; for the service user a root-only
        # fragment is EACCES, the same path
        link = tmp_path / "config.d" / ".link"
        link.symlink_to("/proc/self/mem")
        os.replace(link, frag)
        c.wait()
        assert c.errors == [[f"{frag}: cannot read config fragment: Input/output error"]]
    finally:
        w.stop()
