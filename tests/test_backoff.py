"""Full-jitter backoff stays within its exponential ceiling and honours (capped) Retry-After."""

from __future__ import annotations

import random
from email.utils import formatdate

from edge_agent.backoff import Backoff, parse_retry_after


def test_ceiling_doubles_from_base_to_cap() -> None:
    b = Backoff(2.0, 300.0)
    assert [b.ceiling(n) for n in (1, 2, 3, 4, 8, 9, 50)] == [2, 4, 8, 16, 256, 300, 300]


def test_delay_is_a_full_jitter_draw_below_the_ceiling() -> None:
    b = Backoff(2.0, 300.0, random.Random(1))
    draws = [b.delay(4) for _ in range(2000)]
    assert all(0 <= d <= 16 for d in draws)
    assert min(draws) < 1 and max(draws) > 15  # spread over the whole range, not clustered


def test_retry_after_is_a_floor_but_capped() -> None:
    b = Backoff(2.0, 300.0, random.Random(1))
    assert all(b.delay(1, retry_after_s=30) >= 30 for _ in range(100))
    assert b.delay(1, retry_after_s=10**9) <= 300


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("120") == 120
    now = 1_800_000_000.0
    assert parse_retry_after(formatdate(now + 90, usegmt=True), now_wall=now) == 90
    assert parse_retry_after(formatdate(now - 90, usegmt=True), now_wall=now) == 0  # in the past
    assert parse_retry_after("soon") is None
    assert parse_retry_after("") is None and parse_retry_after(None) is None
    assert parse_retry_after("-5") is None
