"""What an edge server's reply means for the clip: the one table the uploader acts on
(docs/architecture.md section 6), and the receipt check of a 2xx.

A refusal is judged by its status and, where the server gives one, the `reason` of its JSON
(contract.FIELD_REASON): a 400 that says `incomplete_body` is a transfer cut short, sent again, while
any other 400 is a request the server will never take; a 422 that says `video_mismatch` asks the
agent to look at its own file first. Servers that send no reason get the status's meaning.
"""

from __future__ import annotations

import json
from typing import Any

from edge_agent.delivery import contract
from edge_agent.str_enum import StrEnum


class Verdict(StrEnum):
    DELIVERED = "delivered"  # the server has the clip: the spool deletes it (after the receipt check)
    DUPLICATE = "duplicate"  # the server had it already: deleted too
    RETRY = "retry"  # kept; tried again after its backoff (Retry-After honoured)
    REDIRECT = "redirect"  # kept and retried: never followed, the log names where it points
    CHECK_VIDEO = "check_video"  # the server got other bytes than the metadata describes: re-hash the file
    QUARANTINE = "quarantine"  # refused for good: set aside for a person


# (status, reason) -> verdict; (status, None) stands for any reason. Checked before the status classes.
TABLE: dict[tuple[int, str | None], Verdict] = {
    (409, None): Verdict.DUPLICATE,
    # a device credential problem, fixed without requeueing (the token file is read again)
    (401, None): Verdict.RETRY,
    (403, None): Verdict.RETRY,
    (408, None): Verdict.RETRY,
    (425, None): Verdict.RETRY,
    (429, None): Verdict.RETRY,
    (400, contract.REASON_INCOMPLETE_BODY): Verdict.RETRY,
    (422, contract.REASON_VIDEO_MISMATCH): Verdict.CHECK_VIDEO,
}
# status // 100 -> verdict, for statuses the table does not name; any other 4xx quarantines
CLASSES: dict[int, Verdict] = {2: Verdict.DELIVERED, 3: Verdict.REDIRECT, 5: Verdict.RETRY}


def classify(status: int, reason: str | None = None) -> Verdict:
    return (TABLE.get((status, reason)) or TABLE.get((status, None))
            or CLASSES.get(status // 100, Verdict.QUARANTINE))


def reply_json(text: str) -> dict[str, Any] | None:
    """The reply's JSON object, or None when it is not one."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def reason_of(reply: dict[str, Any] | None) -> str | None:
    value = (reply or {}).get(contract.FIELD_REASON)
    return value if isinstance(value, str) else None


def receipt_problem(sent_sha256: str | None, reply: dict[str, Any] | None) -> str | None:
    """Why a 2xx does not acknowledge the video that was sent, or None. Only a reply carrying the
    receipt field is checked (a server that does not send it is taken at its word), and only when a
    video with a known sha256 was sent."""
    if sent_sha256 is None or reply is None or contract.RECEIPT_SHA256 not in reply:
        return None
    stored = reply[contract.RECEIPT_SHA256]
    if stored is None:
        return "the server's receipt says it stored no video"
    if not isinstance(stored, str) or stored.lower() != sent_sha256.lower():
        return f"the server's receipt names sha256 {str(stored)[:64]}, the clip sent is {sent_sha256}"
    return None
