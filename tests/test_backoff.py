"""Full-jitter backoff stays within its exponential ceiling, honours (capped) Retry-After, and never
reads the wall clock."""

from __future__ import annotations

import random
import time
from email.utils import formatdate

import pytest

from edge_agent.delivery.backoff import Backoff, parse_retry_after


def test_ceiling_doubles_from_base_to_cap() -> None:
    b = Backoff(2.0, 300.0)
    assert [b.ceiling(n) for n in (0, 1, 2, 3, 4, 8, 9, 50, 10**6)] == [2, 2, 4, 8, 16, 256, 300, 300, 300]


def test_delay_is_a_full_jitter_draw_over_the_whole_range() -> None:
    b = Backoff(2.0, 300.0, random.Random(1))
    draws = [b.delay(4) for _ in range(2000)]
    assert all(0 <= d <= 16 for d in draws)
    assert min(draws) < 1 and max(draws) > 15  # spread from 0 to the ceiling, not clustered
    assert sum(draws) / len(draws) == pytest.approx(8, rel=0.1)  # uniform: the mean is half the ceiling


def test_injected_random_makes_delays_reproducible() -> None:
    a, b = Backoff(0.5, 60, random.Random(7)), Backoff(0.5, 60, random.Random(7))
    assert [a.delay(n) for n in range(1, 12)] == [b.delay(n) for n in range(1, 12)]


def test_retry_after_is_a_floor_but_capped() -> None:
    b = Backoff(2.0, 300.0, random.Random(1))
    assert all(b.delay(1, retry_after_s=30) >= 30 for _ in range(100))
    assert b.delay(1, retry_after_s=10**9) == 300  # a hostile Retry-After cannot park the queue
    assert 0 <= b.delay(1, retry_after_s=-5) <= 2


def test_delays_never_read_the_wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_wall_clock() -> float:
        raise AssertionError("backoff read time.time()")

    monkeypatch.setattr(time, "time", no_wall_clock)
    b = Backoff(1.0, 10.0, random.Random(3))
    assert 0 <= b.delay(3, retry_after_s=2) <= 4
    assert parse_retry_after("120") == 120  # delta-seconds need no clock either


def test_retry_after_delta_seconds() -> None:
    assert parse_retry_after("120") == 120
    assert parse_retry_after(" 7 ") == 7
    assert parse_retry_after("0") == 0
    for bad in ("soon", "", None, "-5", "1.5", "١٢٠", "12 s"):
        assert parse_retry_after(bad) is None, bad


def test_retry_after_http_date_in_all_three_rfc9110_formats() -> None:
    now = 784_111_777.0  # Sun, 06 Nov 1994 08:49:37 GMT, RFC 9110's example
    assert parse_retry_after(formatdate(now + 90, usegmt=True), now_wall=now) == 90
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now_wall=now - 5) == 5  # IMF-fixdate
    assert parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now_wall=now - 5) == 5  # obsolete RFC 850
    assert parse_retry_after("Sun Nov  6 08:49:37 1994", now_wall=now - 5) == 5  # obsolete asctime
    assert parse_retry_after(formatdate(now - 90, usegmt=True), now_wall=now) == 0  # in the past: now
    assert parse_retry_after("Sun, 06 Nov 99999 08:49:37 GMT", now_wall=now) is None
