"""CIDs are attacker-controlled: only payloads that fully match the pattern pass, and rejected ones
are logged in a form that cannot forge a log line."""

from __future__ import annotations

import pytest

from edge_agent.delivery.cid import CidValidator, escape_payload


@pytest.mark.parametrize("payload", ["CID-7F3A9C21", "lot42.box:0007", "a", "A" * 128, "x_y-z.1:2"])
def test_valid_cids_pass(payload: str) -> None:
    assert CidValidator().check(payload) == payload


@pytest.mark.parametrize(
    "payload",
    [
        "",
        "../../etc/passwd",
        "A1;rm -rf /",
        "CID-1\n",  # `$` alone would accept a trailing newline
        "CID-1\nInjected: header",
        "-leading-dash",
        "A" * 129,
        "with space",
        "CID\x00NUL",
        "ünïcode",
        "$(reboot)",
        "A" * 100_000,
    ],
)
def test_hostile_payloads_are_rejected(payload: str) -> None:
    assert CidValidator().check(payload) is None


def test_max_length_is_enforced_before_the_pattern() -> None:
    v = CidValidator(pattern=r".*", max_length=8)
    assert v.check("12345678") == "12345678"
    assert v.check("123456789") is None


def test_custom_pattern_is_a_full_match() -> None:
    v = CidValidator(pattern=r"CID-[0-9]+")
    assert v.check("CID-42") == "CID-42"
    assert v.check("CID-42x") is None
    assert v.check("xCID-42") is None


def test_escaped_payload_is_one_ascii_line_and_truncated() -> None:
    text = escape_payload(b"evil\nline\x1b[31m\xff" + b"A" * 500)
    assert "\n" not in text and "\x1b" not in text
    assert text.isascii()
    assert text.endswith("chars)")
    assert len(text) < 120


def test_escaped_payload_quotes_cannot_close_the_field() -> None:
    assert escape_payload('a"b') == '"a\\"b"'
