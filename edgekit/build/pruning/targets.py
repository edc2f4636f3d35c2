"""Pruning to a target (MACs or measured latency) instead of a ratio: the ratio is searched on a grid."""

import math
from typing import Callable, Dict, List, Tuple

from edgekit.errors import EdgekitError

MAX_RATIO = 0.9  # the search for a MACs or latency target stops here


def search_ratio(measure: Callable[[float], float], target: float, what: str, unit: str,
                 step: float) -> Tuple[float, List[Dict]]:
    """The smallest ratio on a grid of `step` whose measure is at or below target. A grid, not bisection: with
    channel counts rounded to 8 the measure is not monotonic in the ratio (a layer rounded to zero channels
    is skipped by the pruner, so a higher ratio can leave a larger model)."""
    tried: List[Dict[str, float]] = []

    def at(r: float) -> float:
        v = measure(r)
        tried.append({"ratio": round(r, 4), what: v})
        return v

    base = at(0.0)
    if base <= target:
        raise EdgekitError(f"the unpruned model already meets the target: {what} {base:.4g}{unit} <= "
                           f"{target:.4g}{unit}")
    for k in range(1, int(round(MAX_RATIO / step)) + 1):
        if at(k * step) <= target:
            return round(k * step, 4), tried
    best = min(tried, key=lambda t: t[what])
    raise EdgekitError(f"target {what} {target:.4g}{unit} is not reachable: the closest reached is "
                       f"{best[what]:.4g}{unit} at ratio {best['ratio']:g} (unpruned: {base:.4g}{unit})")


def parse_macs(text: str) -> float:
    """'40M' -> 4e7, '1.2G' -> 1.2e9, '5e7' -> 5e7."""
    t = text.strip().upper()
    scale = {"K": 1e3, "M": 1e6, "G": 1e9}.get(t[-1:], 1.0)
    try:
        v = float(t[:-1] if t[-1:] in "KMG" else t) * scale
    except ValueError:
        raise EdgekitError(f"--target-macs {text}: expected a number like 40M or 4e7") from None
    if not math.isfinite(v):
        raise EdgekitError(f"--target-macs {text}: expected a finite number")
    return v
