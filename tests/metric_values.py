"""Read a `Metrics` registry back, as a scrape would, by the exported series name.

For tests and benchmarks only: code under edge_agent/ writes metrics and never reads them
(tests/test_metrics.py fails if it does); what a part counted it says in its own status.
"""

from __future__ import annotations

from edge_agent.metrics import Metrics


def value(metrics: Metrics, name: str, **labels: str) -> float:
    """A counter's or gauge's sample for exactly these labels; 0 when it has none yet."""
    return metrics.registry.get_sample_value(name, labels) or 0.0


def total(metrics: Metrics, name: str) -> float:
    """A counter summed over all its label values."""
    return sum(s.value for family in metrics.registry.collect() for s in family.samples if s.name == name)


def observations(metrics: Metrics, name: str) -> tuple[int, float]:
    """A histogram's (count, sum)."""
    return int(value(metrics, f"{name}_count")), value(metrics, f"{name}_sum")
