"""The kernel's NTP state as the agent reads it: the same rule as timedatectl, and the override."""

from __future__ import annotations

import pytest

from edge_agent import clock_sync


def test_reads_the_kernel_state_without_privileges():
    state = clock_sync.read()
    # this machine's kernel answers adjtimex(2); a read-only call needs no capability
    assert state.source == "adjtimex"
    assert state.max_error_s is not None and state.max_error_s >= 0
    assert state.synchronized is (state.max_error_s < 16.0)


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("0", False), ("yes", True), ("no", False)])
def test_override_wins(monkeypatch, value, expected):
    monkeypatch.setenv(clock_sync.OVERRIDE_ENV, value)
    state = clock_sync.read()
    assert (state.synchronized, state.source) == (expected, "override")
