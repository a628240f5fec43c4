"""The cheapest (d, w, r) within an accuracy loss: instead of a budget, a largest allowed drop
of predicted validation accuracy below the original's, and the fewest MACs (or, with a
latency model, the lowest modelled latency on its target) that keeps within it.

The drop is hedged by the predictor's uncertainty as the budgeted choice is: a point
qualifies when its predicted drop plus one standard deviation of that drop
(:meth:`~dwrprune.search.predictor.Predictor.gain` against the original, floored at the
noise of one measured accuracy) is at most ``max_drop``.

The samples are measured after a brief fine-tune, which by itself moves accuracy: the
unpruned model fine-tuned as briefly (the collection's reference sample) typically scores a
few tenths of a point below the original, and pruned models recover more in the final
fine-tune than in the brief one.  A :class:`Reference` takes that out: the predicted drop is
counted from the briefly fine-tuned unpruned model (never from above the original), and the
reference's own measurement noise joins the standard deviation: the noise of a paired
difference (the two models on the same validation images, which they mostly agree on), a
small fraction of one accuracy's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import DwrpruneError
from ..pruning.shrink import Shrinker
from .solver import whole_channel_widths


def narrowest(ok: Callable[[float], bool], lo: float, steps: int = 12) -> float | None:
    """The narrowest w in [lo, 1] for which ``ok`` holds, given that accuracy never falls
    as w grows: ``lo`` if it holds there, None if not even at 1, else bisection."""
    if not ok(1.0):
        return None
    if ok(lo):
        return lo
    a, b = lo, 1.0  # fails at a, holds at b
    for _ in range(steps):
        mid = (a + b) / 2
        a, b = (a, mid) if ok(mid) else (mid, b)
    return b


def _fastest_wider(shr: Shrinker, latency, d: float, w: float, r: float,
                   span: float = 0.2) -> tuple[float, float]:
    """The width in [w, w + span] (whole channels of the widest group) with the lowest
    modelled latency: wider keeps the accuracy, and kernels that compute channels in blocks
    can run a wider layer faster."""
    best = (w, latency(shr, d, w, r))
    for x in whole_channel_widths(shr, w, w + span):
        ms = latency(shr, d, x, r)
        if ms < best[1]:
            best = (x, ms)
    return best


@dataclass(frozen=True)
class Reference:
    """What the samples' brief fine-tune alone costs the unpruned model: ``shortfall``
    (fraction of accuracy, >= 0) of the briefly fine-tuned original below the original, and
    ``sd``, the noise of that measurement."""

    shortfall: float
    sd: float

    @staticmethod
    def measured(original_acc: float, reference_acc: float, val_images: int,
                 paired_sd: float | None = None) -> Reference:
        """From the two validation accuracies; a brief fine-tune that gains is no shortfall
        (the drop is never counted from above the original).  The noise is ``paired_sd``
        (the two models on the same images, :meth:`PairedResult.difference_sd
        <dwrprune.training.engine.PairedResult.difference_sd>`) where it was measured, else,
        conservatively, that of one accuracy on ``val_images`` images."""
        a = min(max(reference_acc, 0.0), 1.0)
        if paired_sd is None:
            paired_sd = math.sqrt(a * (1 - a) / val_images) if val_images > 0 else 0.0
        return Reference(max(0.0, original_acc - reference_acc), paired_sd)

    def to_dict(self) -> dict:
        return {"shortfall": self.shortfall, "sd": self.sd}


def hedged_drop(pred, point, reference: Reference | None = None) -> tuple[float, float]:
    """Predicted drop (fraction of accuracy) of ``point`` below the original, and its sd;
    with a ``reference``, counted from the briefly fine-tuned original."""
    gain, sd = pred.gain(tuple(point), (1.0, 1.0, 1.0))
    if reference is None:
        return -gain, sd
    return -gain - reference.shortfall, math.hypot(sd, reference.sd)


def solve_max_drop(pred, shr: Shrinker, max_drop: float, lower: tuple[float, float, float],
                   latency=None, keep: int = 5, reference: Reference | None = None,
                   round_to: int | None = None) -> dict:
    """Every kept-block count and input side in the box, each with the narrowest width whose
    hedged drop is within ``max_drop`` (points); the cheapest first (``latency``: a
    :class:`~dwrprune.cost.latency.LatencyModel`, else exact MACs).  ``reference``: the
    drop is counted from the briefly fine-tuned original (see the module docstring).
    ``round_to`` (with ``latency``, where ``shr`` does not round already): each also with
    its channel counts rounded down to that multiple, predicted as the unrounded width of
    equal MACs (:func:`~dwrprune.search.latency.equivalent_width`); a candidate's
    ``round_to`` says which it is.  Returns ``best`` and up to ``keep - 1`` ``runners_up``
    (candidate dicts)."""
    from .latency import equivalent_width

    if not (isinstance(max_drop, (int, float)) and math.isfinite(max_drop) and max_drop >= 0):
        raise DwrpruneError(f"max_drop must be a number of points >= 0, got {max_drop!r}")
    limit = max_drop / 100
    nb, px = len(shr.blocks), shr.base_resolution
    ds = [k / nb for k in range(nb, 0, -1) if k / nb >= lower[0] - 1e-9] if nb else [1.0]
    pmin = max(shr.min_resolution, math.ceil(lower[2] * px - 1e-9))
    variants = [(shr, None)]
    if latency is not None and round_to and shr.round_to is None:
        variants.append((shr.rounded(round_to), round_to))
    cands = []
    for d in ds:
        for p in range(px, pmin - 1, -1):
            r = p / px
            for s, k in variants:
                def at(w, s=s, k=k, d=d, r=r):  # the unrounded width predicted for w
                    return w if k is None else equivalent_width(shr, s, d, w, r, lower[1])

                w = narrowest(lambda w, d=d, r=r, at=at: (x := at(w)) is not None and sum(
                    hedged_drop(pred, (d, x, r), reference)) <= limit, lower[1])
                if w is None:
                    continue
                ms = None
                if latency is not None:  # a little wider can run faster (channels in blocks)
                    w, ms = _fastest_wider(s, latency, d, w, r)
                if d == w == r == 1.0 or (k is not None and s.macs(d, w, r) ==
                                          shr.macs(d, w, r)):
                    continue  # the original itself; or rounding changed nothing
                drop, sd = hedged_drop(pred, (d, at(w), r), reference)
                c = {"d": d, "w": w, "r": r, "resolution": p, "round_to": k,
                     "predicted": float(pred(d, at(w), r)), "drop": drop, "drop_sd": sd,
                     "macs": s.macs(d, w, r)}
                if ms is not None:
                    c["latency_ms"] = ms
                cands.append(c)
    if not cands:
        _, sd = hedged_drop(pred, (1.0, 1.0, 1.0), reference)
        brief = ("counted from the original fine-tuned as briefly" if reference else
                 "counted from the original, which the samples' brief fine-tune alone "
                 "falls short of")
        raise DwrpruneError(
            f"no pruned model is predicted within {max_drop:g} points of the original (the "
            f"prediction's own uncertainty is {100 * sd:.2f} points; the predicted drop is "
            f"of accuracy after the samples' brief fine-tune, {brief}): allow a larger drop, "
            "or measure on more validation images")
    cost = "latency_ms" if latency is not None else "macs"
    cands.sort(key=lambda c: (c[cost], -c["predicted"]))
    return {"max_drop": max_drop, "best": cands[0], "runners_up": cands[1:keep],
            "minimised": cost, "reference": None if reference is None else reference.to_dict()}
