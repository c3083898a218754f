"""Saving the config reloads it however the editor writes, once per burst; a bad edit keeps the old
config; live and restart-only keys are told apart. The tests wait on the watcher's own record of its
checks (`wait_checked`), so "no reload" is asserted after the watcher has looked, not after a pause."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from edge_agent.config import Config, parse_config
from edge_agent.service.reload import CheckOutcome, ConfigCheck, ConfigWatcher, classify_changes
from tests.hostile_yaml import ALIAS_BOMB, ALIAS_BOMB_AT

SRC = "source: {kind: file, path: x.mp4}\n"


class Collector:
    def __init__(self) -> None:
        self.configs: list[Config] = []
        self.errors: list[list[str]] = []
        self.event = threading.Event()
        self.watcher: ConfigWatcher | None = None
        self.before = 0  # checks finished before the one that reloaded

    def ok(self, cfg: Config) -> None:
        self.configs.append(cfg)
        self._heard()

    def bad(self, lines: list[str]) -> None:
        self.errors.append(lines)
        self._heard()

    def _heard(self) -> None:
        assert self.watcher is not None
        self.before = self.watcher.checks  # the calling check is not counted yet
        self.event.set()

    def wait(self, timeout: float = 5.0) -> None:
        """Until a reload (or its errors), then until that check and every one due after it finished:
        a second reload from the same save would be in by then."""
        assert self.event.wait(timeout), "no reload"
        assert self.watcher is not None and self.watcher.wait_checked(self.before, timeout), "check not finished"
        self.event.clear()


def watch(tmp_path: Path) -> tuple[Path, Collector, ConfigWatcher]:
    path = tmp_path / "config.yaml"
    path.write_text("clip:\n  pre_roll_s: 1\n" + SRC)
    c = Collector()
    w = ConfigWatcher(path, c.ok, c.bad, debounce_s=0.2)
    c.watcher = w
    w.start()
    return path, c, w


def checked(w: ConfigWatcher, after: int) -> ConfigCheck:
    """The watcher's decision on a change made after its check number `after`."""
    check = w.wait_checked(after, timeout=5.0)
    assert check is not None, "the watcher did not check the config after the change"
    return check


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
        n = w.checks
        path.write_text("clip:\n  pre_roll_s: 1.9\n" + SRC)  # same content: no reload
        assert checked(w, n).outcome == CheckOutcome.UNCHANGED
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
        n = w.checks
        (tmp_path / "config.d" / "10-fleet.yaml~").write_text("clip:\n  pre_roll_s: 4\n")  # not a fragment
        assert checked(w, n).outcome == CheckOutcome.UNCHANGED
        assert len(c.configs) == 3
    finally:
        w.stop()


def test_a_fragment_folder_made_after_start_is_watched_and_its_errors_reported(tmp_path: Path) -> None:
    path, c, w = watch(tmp_path)
    try:
        n = w.checks
        (tmp_path / "config.d").mkdir()
        # the folder's own event: checked (after the folder is watched), an unchanged config
        assert checked(w, n).outcome == CheckOutcome.UNCHANGED
        assert c.configs == [] and c.errors == []
        (tmp_path / "config.d" / "10-fleet.yaml").write_text("clip:\n  pre_rol_s: 2\n")
        c.wait()
        assert c.errors == [[f"{tmp_path / 'config.d' / '10-fleet.yaml'}:2:3: clip.pre_rol_s: unknown key "
                             "(did you mean pre_roll_s?)"]]
    finally:
        w.stop()


@pytest.mark.parametrize("target", ["/proc/self/mem", "gone.yaml"], ids=["unreadable", "dangling-link"])
def test_a_fragment_the_agent_cannot_read_is_refused_not_skipped(tmp_path: Path, target: str) -> None:
    """The watcher looks at what the loader reads: a fragment replaced by one it cannot read is an error of its
    own (not the main file away, not a fragment silently dropped). Unreadable: a regular file that even root
    cannot read (the tests run as root, where chmod 0 would not stop a read), the process' own memory at
    offset 0, EIO; for the service user a root-only fragment is EACCES, the same path. Dangling: a link whose
    target is gone."""
    (tmp_path / "config.d").mkdir()
    path, c, w = watch(tmp_path)
    frag = tmp_path / "config.d" / "10-fleet.yaml"
    gone = tmp_path / "gone.yaml"
    says = {"/proc/self/mem": "Input/output error",
            "gone.yaml": f"a symbolic link to {gone}, which does not exist: restore its target, or remove the link"}
    try:
        frag.write_text("clip:\n  pre_roll_s: 2\n")
        c.wait()
        link = tmp_path / "config.d" / ".link"
        link.symlink_to(target if target.startswith("/") else gone)
        os.replace(link, frag)
        c.wait()
        assert c.errors == [[f"{frag}: cannot read config fragment: {says[target]}"]]
    finally:
        w.stop()


def test_an_alias_bomb_saved_as_a_fragment_is_refused_where_it_crosses_the_bound_and_nothing_applies(
        tmp_path: Path) -> None:
    """The same bound as `config validate`'s, on the watcher's path: the running config stays, the next good
    save applies."""
    (tmp_path / "config.d").mkdir()
    path, c, w = watch(tmp_path)
    frag = tmp_path / "config.d" / "50-bomb.yaml"
    try:
        frag.write_text(ALIAS_BOMB)
        c.wait()
        assert c.configs == [] and len(c.errors) == 1
        assert c.errors[0] == [f"{frag}:{ALIAS_BOMB_AT}: the document stands for more than 10000 values here "
                               "(aliases expanded): a config has a few hundred; write the values out, or use fewer "
                               "aliases"]
        frag.write_text("clip:\n  pre_roll_s: 2\n")
        c.wait()
        assert [cfg.clip.pre_roll_s for cfg in c.configs] == [2]
    finally:
        w.stop()


def test_a_reload_signal_and_the_watcher_count_one_reload_per_save_in_either_order(tmp_path: Path) -> None:
    """`systemctl reload` after a save (SIGHUP -> reload_now): whichever looks first loads the new
    content, the other finds it unchanged."""
    path, c, w = watch(tmp_path)
    try:
        # the watcher first, then the signal
        path.write_text("clip:\n  pre_roll_s: 2\n" + SRC)
        c.wait()
        assert w.reload_now().outcome == CheckOutcome.UNCHANGED
        # the signal at once, inside the watcher's debounce: the watcher then has nothing left to load
        path.write_text("clip:\n  pre_roll_s: 3\n" + SRC)
        assert w.reload_now().outcome == CheckOutcome.LOADED
        assert w.wait_checked(0, timeout=5.0) is not None
        assert [cfg.clip.pre_roll_s for cfg in c.configs] == [2, 3]
        assert w.reload_now().outcome == CheckOutcome.UNCHANGED
    finally:
        w.stop()
