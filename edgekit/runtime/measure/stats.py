"""Latency statistics as BENCHMARKS.md asks for them: percentiles, max, mean and the coefficient of variation."""

from typing import Dict, Sequence

import numpy as np

DEFAULT_PERCENTILES = (50.0, 90.0, 99.0)


def key(q: float) -> str:
    """90 -> 'p90', 99.9 -> 'p99.9'."""
    return f"p{q:g}"


def summarize(values_ms: Sequence[float], percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> Dict[str, float]:
    """count, the median (p50) and each requested percentile, max, mean, std and CV (std/mean)."""
    if len(values_ms) == 0:
        return {"count": 0}
    a = np.asarray(values_ms, dtype=np.float64)
    mean = float(a.mean())
    qs = sorted({50.0, *(float(q) for q in percentiles)})
    out: Dict[str, float] = {"count": int(a.size)}
    out.update({key(q): float(v) for q, v in zip(qs, np.percentile(a, qs))})
    out.update({"max": float(a.max()), "mean": mean, "std": float(a.std()),
                "cv": float(a.std() / mean) if mean > 0 else 0.0})
    return out
