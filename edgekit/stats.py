"""Latency statistics as BENCHMARKS.md asks for them: p50/p90/p99/max/mean and the coefficient of variation."""

from typing import Dict, Sequence

import numpy as np


def summarize(values_ms: Sequence[float]) -> Dict[str, float]:
    if len(values_ms) == 0:
        return {"count": 0}
    a = np.asarray(values_ms, dtype=np.float64)
    mean = float(a.mean())
    return {
        "count": int(a.size),
        "p50": float(np.percentile(a, 50)),
        "p90": float(np.percentile(a, 90)),
        "p99": float(np.percentile(a, 99)),
        "max": float(a.max()),
        "mean": mean,
        "cv": float(a.std() / mean) if mean > 0 else 0.0,
    }
