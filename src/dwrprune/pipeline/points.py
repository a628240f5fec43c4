"""Realisable points on a budget's surface: the largest one-axis models under a budget."""

from __future__ import annotations

from ..pruning.shrink import Shrinker


def largest_under(values: list[float], fits) -> float | None:
    """The largest of ``values`` (ascending) for which ``fits`` holds, by bisection."""
    lo, hi = 0, len(values) - 1
    if not values or not fits(values[lo]):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(values[mid]) else (lo, mid - 1)
    return values[lo]


def one_axis_point(shr: Shrinker, axis: str, budget: float) -> tuple[float, float, float] | None:
    """The largest realisable point under ``budget`` that prunes ``axis`` ("d", "w" or "r")
    alone (exact MACs), or None when that axis alone cannot reach the budget."""
    limit = budget * shr.macs(1, 1, 1)
    n, px = len(shr.blocks), shr.base_resolution
    if axis == "d":
        v = largest_under([k / n for k in range(1, n + 1)], lambda d: shr.macs(d, 1, 1) <= limit)
        return (v, 1.0, 1.0) if v is not None else None
    if axis == "r":
        v = largest_under([p / px for p in range(shr.min_resolution, px + 1)],
                          lambda r: shr.macs(1, 1, r) <= limit)
        return (1.0, 1.0, v) if v is not None else None
    v = largest_under([i / 1000 for i in range(1, 1001)], lambda w: shr.macs(1, w, 1) <= limit)
    return (1.0, v, 1.0) if v is not None else None


ONE_AXIS = (("width-only", "w"), ("depth-only", "d"), ("resolution-only", "r"))


__all__ = ["ONE_AXIS", "largest_under", "one_axis_point"]
