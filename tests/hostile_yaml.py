"""Config documents that attack the parser rather than configure anything, for the tests and the benchmark
of its bounds (edge_agent/config/yaml_limits.py)."""

from __future__ import annotations

# Ten lines whose aliases stand for a billion values: YAML builds them shared, but a merge or a validation
# walks every copy (a running daemon's reload took a gigabyte in seconds).
ALIAS_BOMB = "".join(f"{k}: &{k} [{', '.join([f'*{p}'] * 10) if p else ', '.join(['x'] * 10)}]\n"
                     for p, k in zip([None, *"abcdefgh"], "abcdefghi", strict=True))
# Where the bomb crosses the bound of values (line 4, the d: list's first alias past 10,000)
ALIAS_BOMB_AT = "4:36"
RECURSIVE_ALIAS = "a: &a [*a]\n"
NESTED_5000 = "a: " + "[" * 5000 + "]" * 5000 + "\n"
