"""The crash tests' judge (tests/read_ledger.py) tells a read a kill took the log line of from a ghost:
a delivery no agent logged is a real read when the camera showed its label, once; else a ghost."""

from __future__ import annotations

import json
from types import SimpleNamespace

from tests.read_ledger import judge


def _cid_only(key: str, cid: str) -> SimpleNamespace:
    meta = {"event_id": key, "cid": cid, "clip": {"error": "edge-agent stopped before this read's clip was made"}}
    return SimpleNamespace(fields={"metadata": json.dumps(meta), "cid": cid.encode()}, key=key)


def test_an_unlogged_delivery_of_a_shown_label_is_a_read_and_of_an_unshown_one_a_ghost() -> None:
    delivered = {"e1": _cid_only("e1", "PC-000001"), "e2": _cid_only("e2", "PC-000002"),
                 "e3": _cid_only("e3", "PC-000009")}
    verdict = judge({"e1": "PC-000001"}, delivered, delivered.values(), shown={"PC-000001", "PC-000002"})
    assert verdict.unlogged == {"e2": "PC-000002"}
    assert len(verdict.ghosts) == 1 and "e3 (cid PC-000009)" in verdict.ghosts[0] and not verdict.ok


def test_a_shown_label_delivered_under_two_event_ids_is_a_ghost_all_the_same() -> None:
    delivered = {"e1": _cid_only("e1", "PC-000001"), "e2": _cid_only("e2", "PC-000001")}
    verdict = judge({"e1": "PC-000001"}, delivered, delivered.values(), shown={"PC-000001"})
    assert verdict.ghosts == ["cid PC-000001 delivered under 2 event ids: e1, e2"] and not verdict.ok
