"""Small statistics used by the load generator and the runner: percentiles and medians.

Percentiles are computed from the merged raw samples of every generator process (nearest
rank on the sorted list), never by averaging per-process percentiles, which would be wrong
whenever the processes saw different load.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

__all__ = ["latency_summary", "median", "percentile"]


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (0.0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(fraction * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


def latency_summary(samples: Iterable[float]) -> dict[str, float]:
    """p50/p90/p99/max/mean in milliseconds of samples given in seconds."""
    ordered = sorted(samples)
    if not ordered:
        return {"count": 0, "p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0}
    ms = 1000.0
    return {
        "count": len(ordered),
        "p50": round(percentile(ordered, 0.50) * ms, 3),
        "p90": round(percentile(ordered, 0.90) * ms, 3),
        "p99": round(percentile(ordered, 0.99) * ms, 3),
        "max": round(ordered[-1] * ms, 3),
        "mean": round(sum(ordered) / len(ordered) * ms, 3),
    }


def median(values: Iterable[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return float(ordered[mid])
    return (ordered[mid - 1] + ordered[mid]) / 2.0
