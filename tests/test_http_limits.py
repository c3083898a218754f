"""The web server's limits where time is the subject, on a clock the test steps (their waits run to
minutes, which the real-server test in test_web_clients.py cannot wait out): wrong passwords are free
for a few, then each next try waits twice as long up to the cap, per client; a client quiet for
`forget_s` starts afresh; a kind of log line is written once per interval, the next one saying how
many were left out; and one budget for every address together, which a client that logged in is not
held by."""

from __future__ import annotations

from edge_agent.service.http_limits import Held, LineLimiter, LoginBackoff


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
    assert logins.held("10.0.0.1") == Held(1, False) and logins.held("10.0.0.2") is None
    clock.advance(0.5)
    assert logins.held("10.0.0.1") == Held(1, False)  # whole seconds, rounded up
    clock.advance(0.5)
    assert logins.held("10.0.0.1") is None
    waits = []
    for _ in range(4):
        failures, wait = logins.failed("10.0.0.1")
        waits.append(wait)
        clock.advance(wait)
    assert waits == [2.0, 4.0, 8.0, 8.0] and failures == 7
    # one host picks freely among the addresses of its IPv6 /64: they share one back-off
    for _ in range(3):
        logins.failed("2001:db8::1")
    assert logins.held("2001:db8::ffff") == Held(1, False) and logins.held("2001:db9::1") is None


def test_a_client_quiet_for_forget_s_starts_afresh() -> None:
    clock = SteppedClock()
    logins = LoginBackoff(free=1, start_s=1.0, forget_s=900.0, clock=clock)
    assert logins.failed("10.0.0.1") == (1, 1.0)
    clock.advance(899.0)
    assert logins.failed("10.0.0.1") == (2, 2.0)  # within forget_s of the last failure: counted on
    clock.advance(900.5)
    assert logins.held("10.0.0.1") is None and logins.clients() == 0
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


def test_guesses_spread_over_many_addresses_spend_one_budget_then_every_new_address_waits() -> None:
    """60 addresses x 10 guesses, each address within its own free ten: the budget of every address
    together holds after `global_free`, the wait doubling as an address's own does."""
    clock = SteppedClock()
    logins = LoginBackoff(free=10, start_s=1.0, cap_s=60.0, global_free=30, clock=clock)
    checked = held = 0
    for round_ in range(10):
        for i in range(60):
            host = f"127.0.0.{i + 1}"
            if logins.held(host) is not None:
                held += 1
            else:
                logins.failed(host)
                checked += 1
        clock.advance(0.1 if round_ else 0.0)
    assert checked == 30 and held == 570  # the 30th opens the first wait (1 s, not over within this second)
    wait = logins.held("127.0.0.77")
    assert wait is not None and wait.everyone  # a new address, whatever password it brings, is not checked
    assert logins.everyone()[0] == 30
    clock.advance(1.0)
    assert logins.held("127.0.0.77") is None  # the wait is over: one more guess is checked...
    logins.failed("127.0.0.77")
    assert logins.held("127.0.0.78") == Held(2, True)  # ...and the next wait is twice as long


def test_a_client_that_logged_in_is_not_held_by_the_budget_of_every_address_only_by_its_own() -> None:
    clock = SteppedClock()
    logins = LoginBackoff(free=3, start_s=1.0, global_free=5, clock=clock)
    logins.succeeded("10.0.0.9")  # the technician's page, a Prometheus scraper
    for i in range(5):
        logins.failed(f"10.0.1.{i}")
    assert logins.held("10.0.2.1") == Held(1, True) and logins.held("10.0.0.9") is None
    for _ in range(3):
        logins.failed("10.0.0.9")  # its own mistakes still count against it
    assert logins.held("10.0.0.9") == Held(1, False)
    clock.advance(901.0)  # every address quiet for forget_s: the budget starts afresh, known clients are forgotten
    assert logins.held("10.0.2.1") is None and logins.everyone() == (0, 0.0)
