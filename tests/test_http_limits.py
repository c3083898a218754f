"""The web server's limits where time is the subject, on a clock the test steps (their waits run to
minutes, which the real-server test in test_web_clients.py cannot wait out): wrong passwords are free
for a few, then each next try waits twice as long up to the cap, per client; a client quiet for
`forget_s` starts afresh; a kind of log line is written once per interval, the next one saying how
many were left out."""

from __future__ import annotations

from edge_agent.service.http_limits import LineLimiter, LoginBackoff


class SteppedClock:
    """A monotonic clock that moves only when the test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_wrong_passwords_wait_twice_as_long_each_time_up_to_the_cap_for_that_client_only() -> None:
    clock = SteppedClock()
    logins = LoginBackoff(free=3, start_s=1.0, cap_s=8.0, clock=clock)
    assert [logins.failed("10.0.0.1")[1] for _ in range(3)] == [0.0, 0.0, 1.0]  # typos are free
    assert logins.retry_after_s("10.0.0.1") == 1 and logins.retry_after_s("10.0.0.2") == 0
    clock.advance(0.5)
    assert logins.retry_after_s("10.0.0.1") == 1  # whole seconds, rounded up
    clock.advance(0.5)
    assert logins.retry_after_s("10.0.0.1") == 0
    waits = []
    for _ in range(4):
        failures, wait = logins.failed("10.0.0.1")
        waits.append(wait)
        clock.advance(wait)
    assert waits == [2.0, 4.0, 8.0, 8.0] and failures == 7
    # one host picks freely among the addresses of its IPv6 /64: they share one back-off
    for _ in range(3):
        logins.failed("2001:db8::1")
    assert logins.retry_after_s("2001:db8::ffff") == 1 and logins.retry_after_s("2001:db9::1") == 0


def test_a_client_quiet_for_forget_s_starts_afresh() -> None:
    clock = SteppedClock()
    logins = LoginBackoff(free=1, start_s=1.0, forget_s=900.0, clock=clock)
    assert logins.failed("10.0.0.1") == (1, 1.0)
    clock.advance(899.0)
    assert logins.failed("10.0.0.1") == (2, 2.0)  # within forget_s of the last failure: counted on
    clock.advance(900.5)
    assert logins.retry_after_s("10.0.0.1") == 0 and logins.clients() == 0
    assert logins.failed("10.0.0.1") == (1, 1.0)


def test_one_log_line_per_kind_per_interval_the_next_says_how_many_were_left_out() -> None:
    clock = SteppedClock()
    lines = LineLimiter(interval_s=10.0, clock=clock)
    assert lines.allow("reset") == 0
    assert [lines.allow("reset") for _ in range(5)] == [None] * 5
    assert lines.allow("bad request") == 0  # each kind on its own
    clock.advance(9.9)
    assert lines.allow("reset") is None
    clock.advance(0.1)
    assert lines.allow("reset") == 6
    assert lines.allow("reset") is None
