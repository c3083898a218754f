"""Which split (train, val, test) a clip's frames go to: never frames of one clip on both sides, the same
answer on every run and every incremental export.

A clip's split is drawn from a hash of its group key against the fractions: `clip` (the default) groups
by the clip's id, `device-hour` and `device-day` by its device and the hour or day its clip starts in
(UTC), so neighbouring clips of one camera, which show the same scene, stay together. Whatever the key,
clips of one device that overlap in time, in a chain, share a split (they hold the same pictures, one
shortly after the other); a chain is cut where its clips start in another hour (day with device-day), so
a camera that always has a label in view does not make one group of a whole shift: two clips across such
a cut may be on two sides, their identical pictures exported once.
"""

from __future__ import annotations

import hashlib

SPLITS = ("train", "val", "test")
SPLIT_BY = ("clip", "device-hour", "device-day")
_BUCKET_US = {"clip": 3_600_000_000, "device-hour": 3_600_000_000, "device-day": 86_400_000_000}


def bucket_us(split_by: str) -> int:
    """The span a chain of overlapping clips stays within (clip and device-hour: an hour; device-day: a day)."""
    return _BUCKET_US[split_by]


def group_key(split_by: str, ldo_id: str, device_id: str, start_us: int | None) -> str:
    if split_by == "clip" or start_us is None:
        return f"clip\x00{ldo_id}"
    return f"{split_by}\x00{device_id}\x00{start_us // _BUCKET_US[split_by]}"


def draw(key: str, val: float, test: float) -> str:
    """train, val or test for a group key: uniform in [0, 1) from its hash, test first, then val."""
    u = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") / 2**64
    return "test" if u < test else "val" if u < test + val else "train"


def parse_fractions(val: float, test: float) -> None:
    """ValueError when the fractions cannot split a set."""
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ValueError(f"--val {val:g} and --test {test:g}: each from 0 to under 1, together under 1 (the rest "
                         "is train)")
