"""Latency statistics as BENCHMARKS.md asks for them: percentiles, max, mean and the coefficient of variation.

`summarize` is exact and keeps every value (profile's few thousand iterations). `LatencyHistogram` gives
the same summary in constant memory for streams that run for days: a kept list grew run-stream by 1.8 KB a
frame (issue 15)."""

import math
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


class LatencyHistogram:
    """Latencies (ms) in log-spaced buckets 2% wide from 1 µs to 1 hour, 9 KB whatever the count.

    A percentile is read at its bucket's geometric middle, clamped to the exact min and max: within
    RELATIVE_ERROR (1%) of numpy's percentile of the same values; below 1 µs the error is under 1 µs, above
    1 hour the bucket reads as the max. Count, min, max, mean and std are exact (Welford). Histograms merge
    by adding counts, so per-thread or per-run histograms combine without the values."""

    LOW_MS = 1e-3
    GROWTH = 1.02
    BUCKETS = math.ceil(math.log(3.6e6 / LOW_MS) / math.log(GROWTH))  # up to 1 hour
    RELATIVE_ERROR = math.sqrt(GROWTH) - 1
    _INV_LOG_GROWTH = 1 / math.log(GROWTH)

    def __init__(self) -> None:
        # [0]: below LOW_MS; [1 + i]: LOW_MS * GROWTH**i up to the next; [-1]: an hour and more
        self.counts = np.zeros(self.BUCKETS + 2, np.int64)
        self.count = 0
        self.min, self.max = math.inf, -math.inf
        self._mean = self._m2 = 0.0

    @property
    def nbytes(self) -> int:
        return int(self.counts.nbytes)

    def add(self, ms: float) -> None:
        # math.log, not np.log: this runs ~11 times a frame, and np.log on a Python float costs 0.2 µs more
        i = 0 if ms < self.LOW_MS else min(int(math.log(ms / self.LOW_MS) * self._INV_LOG_GROWTH) + 1,
                                            self.BUCKETS + 1)
        self.counts[i] += 1
        self.count += 1
        if ms < self.min:
            self.min = ms
        if ms > self.max:
            self.max = ms
        d = ms - self._mean
        self._mean += d / self.count
        self._m2 += d * (ms - self._mean)

    def merge(self, other: "LatencyHistogram") -> None:
        """Add `other`'s values to this one (Chan et al.'s pairwise update for the variance)."""
        if other.count == 0:
            return
        n = self.count + other.count
        d = other._mean - self._mean
        self._m2 += other._m2 + d * d * self.count * other.count / n
        self._mean += d * other.count / n
        self.count = n
        self.counts += other.counts
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)

    def summary(self, percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> Dict[str, float]:
        """The dict `summarize` returns, with bucketed percentiles."""
        if self.count == 0:
            return {"count": 0}
        cumulative = np.cumsum(self.counts)
        out: Dict[str, float] = {"count": self.count}
        for q in sorted({50.0, *(float(q) for q in percentiles)}):
            # numpy's default: linear between the order statistics either side of rank q/100 * (n - 1)
            rank = q / 100 * (self.count - 1)
            lo = math.floor(rank)
            v = self._order_statistic(cumulative, lo)
            if rank > lo:
                v += (rank - lo) * (self._order_statistic(cumulative, lo + 1) - v)
            out[key(q)] = v
        std = math.sqrt(max(0.0, self._m2 / self.count))
        out.update({"max": self.max, "mean": self._mean, "std": std,
                    "cv": std / self._mean if self._mean > 0 else 0.0})
        return out

    def _order_statistic(self, cumulative: np.ndarray, k: int) -> float:
        """The k-th smallest value (from 0), as its bucket's middle."""
        i = int(np.searchsorted(cumulative, k, side="right"))
        if i == 0:
            return self.min
        if i == self.BUCKETS + 1:
            return self.max
        middle = self.LOW_MS * self.GROWTH ** (i - 0.5)
        return min(max(middle, self.min), self.max)
