"""Pure cost arithmetic: how a (d, w, r) point turns into whole blocks, channels and pixels,
and what layers cost.  No torch here, so the solver and the tests can call it freely.

The rounding rules live only in this module.  Both the physical surgery and the exact cost
query use them, which is why the cost query can be exact without building the model.
"""

from __future__ import annotations

import math

_EPS = 1e-9
ALIGN = 8  # the channel block many kernels compute in (ONNX Runtime's CPU kernels, GPUs)


def check_fraction(name: str, value: float) -> float:
    """A pruning fraction must lie in (0, 1]."""
    from ..errors import DwrpruneError

    if isinstance(value, (str, bytes, bool)):
        raise DwrpruneError(f"{name} must be a number in (0, 1], got {value!r:.40}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise DwrpruneError(f"{name} must be a number in (0, 1], got "
                            f"{type(value).__name__}") from None
    if not (0.0 < v <= 1.0) or math.isnan(v):
        raise DwrpruneError(f"{name} must be in (0, 1] (fraction kept), got {value!r}")
    return v


def kept_blocks(n_removable: int, d: float) -> int:
    """Removable blocks kept at depth fraction ``d`` (rounded to nearest, may be 0)."""
    return min(n_removable, max(0, math.floor(n_removable * d + 0.5 + _EPS)))


def kept_channels(n: int, w: float, ch_groups: int = 1, round_to: int | None = None) -> int:
    """Channels a coupled group of ``n`` keeps at width fraction ``w``.

    Grouped convolutions prune the same number in each of their ``ch_groups`` groups; at least
    one channel per group is kept; ``round_to`` rounds down to a multiple (never below it).
    """
    per = n // ch_groups
    k = max(1, math.floor(per * w + _EPS))
    if round_to and ch_groups == 1 and per >= round_to:
        k = max(round_to, k - k % round_to)
    return min(per, k) * ch_groups


def misaligned(channels: list[tuple[int, int | None]], multiple: int = ALIGN) -> list[int]:
    """The kept channel counts that pruning moved off a multiple of ``multiple``: of the
    ``(before, after)`` pairs, those whose ``before`` was one and ``after`` is not (``after``
    None: the layer was removed).  ONNX Runtime's and GPUs' kernels work in blocks of 8 or 16
    channels, and a layer off them can run slower than the larger original: ``round_to``
    keeps pruned counts on them.

    >>> misaligned([(16, 11), (32, 24), (10, 7), (64, None)])
    [11]
    """
    return [a for b, a in channels
            if a is not None and b % multiple == 0 and a % multiple != 0]


def kept_resolution(native: int, r: float) -> int:
    """Input side kept at resolution fraction ``r`` (rounded to nearest pixel, at least 1)."""
    return max(1, math.floor(native * r + 0.5 + _EPS))


def approx_cost_ratio(d: float, w: float, r: float) -> float:
    """The paper's cost model: MACs(d, w, r) / MACs(1, 1, 1) ~ d * w^2 * r^2."""
    return d * w * w * r * r
