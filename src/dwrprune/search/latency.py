"""The choice of (d, w, r) under a latency budget: the best predicted accuracy whose
modelled latency fits (:func:`solve_latency`), then measured for real and corrected until the
measured latency is within the budget (:func:`choose_under_latency`)."""

from __future__ import annotations

import math

from ..cost.latency import TOLERANCE, LatencyModel, Reference, measure_ms
from ..errors import DwrpruneError
from ..pruning.shrink import Shrinker
from .solver import whole_channel_widths, widest

MIN_WIDTH = 0.125  # the narrowest width a chain is extended to (an eighth of the channels)


class LatencyOutOfReach(DwrpruneError):
    """No model in the searched box reaches the latency budget.  ``reach``: the one-axis
    extension of the box that does (see :func:`reach`), or None where the model itself
    cannot go that fast."""

    def __init__(self, message: str, budget_ms: float, reach: tuple[str, float] | None):
        super().__init__(message)
        self.budget_ms, self.reach = budget_ms, reach


def _axis_values(shr: Shrinker, axis: str, below: float) -> list[float]:
    """Realisable values of ``axis`` under ``below``, largest first, down to what the model
    allows (one block; an eighth of the width; the smallest input)."""
    if axis == "d":
        nb = len(shr.blocks)
        return [k / nb for k in range(nb - 1, 0, -1) if k / nb < below - 1e-9]
    if axis == "w":
        return [w for w in reversed(whole_channel_widths(shr, MIN_WIDTH - 1e-9, 1.0))
                if w < below - 1e-9]
    px = shr.base_resolution
    return [p / px for p in range(px - 1, shr.min_resolution - 1, -1) if p / px < below - 1e-9]


def reach(shr: Shrinker, lat: LatencyModel, budget_ms: float,
          lower: tuple[float, float, float]) -> tuple[str, float] | None:
    """Where to extend the sampled box so that a model reaches ``budget_ms``: the axis (d, w
    or r) and value, at the box's lower corner on the other two axes, that reach it with the
    smallest step past the box (relative to the box's bound), or None where no single axis
    does."""
    best = None
    for i, axis in enumerate("dwr"):
        for v in _axis_values(shr, axis, lower[i]):
            point = tuple(v if j == i else lower[j] for j in range(3))
            if lat(shr, *point) <= budget_ms:
                step = v / lower[i]
                if best is None or step > best[2]:
                    best = (axis, v, step)
                break
    return None if best is None else best[:2]


def fastest(shr: Shrinker, lat: LatencyModel) -> tuple[tuple[float, float, float], float]:
    """The fastest point the model can be pruned to, and its modelled latency."""
    point = tuple((_axis_values(shr, a, 1.0) or [1.0])[-1] for a in "dwr")
    return point, lat(shr, *point)


def _wider_within(shr: Shrinker, lat: LatencyModel, d: float, w: float, r: float,
                  budget_ms: float, span: float = 0.15) -> float:
    """The widest w in [w, w + span] whose modelled latency is within the budget.  Latency is
    not always monotone in width: a lookup table sees that kernels can run a channel count
    that is a multiple of 8 or 16 faster than one channel fewer (the "round the channels"
    effect), which bisection alone would miss.  Steps of one channel of the widest group."""
    best = w
    for x in whole_channel_widths(shr, w, w + span):
        if lat(shr, d, x, r) <= budget_ms:
            best = x
    return best


def equivalent_width(shr: Shrinker, rounded: Shrinker, d: float, w: float, r: float,
                     lo: float) -> float | None:
    """The width at which ``shr`` (unrounded) keeps as many MACs as ``rounded`` keeps at
    (d, w, r): what a rounded model is predicted at, since the predictor was fitted on
    unrounded samples.  None where that width falls below ``lo`` (outside the sampled box,
    where the predictor would extrapolate)."""
    macs = rounded.macs(d, w, r)
    if shr.macs(d, lo, r) > macs:
        return None
    return widest(lambda x: shr.macs(d, x, r) <= macs, lo)


def solve_latency(pred, shr: Shrinker, lat: LatencyModel, budget_ms: float,
                  lower: tuple[float, float, float], round_to: int | None = None) -> dict:
    """The realisable (d, w, r) with the highest predicted accuracy whose modelled latency
    is within ``budget_ms``: every kept-block count and input side in the box, the widest w
    that fits for each (latency grows with w), best predicted accuracy first.

    ``round_to`` (where ``shr`` does not round already): each (d, r) also weighs the widest
    w whose channel counts, rounded down to that multiple, fit.  Kernels that compute
    channels in blocks (ONNX Runtime's CPU kernels, GPUs) can run 8 channels faster than 11,
    so the rounded model can fit a budget at a wider w; it is predicted as accurate as the
    unrounded width of equal MACs (:func:`equivalent_width`) and chosen only where that is
    the higher prediction.  A candidate's ``round_to`` says which it is."""
    nb, px = len(shr.blocks), shr.base_resolution
    ds = [k / nb for k in range(nb, -1, -1) if k / nb >= lower[0] - 1e-9] if nb else [1.0]
    pmin = max(shr.min_resolution, math.ceil(lower[2] * px - 1e-9))
    variants = [(shr, None)]
    if round_to and shr.round_to is None:
        variants.append((shr.rounded(round_to), round_to))
    cands = []
    for d in ds:
        if d == 0:
            continue
        for p in range(px, pmin - 1, -1):
            r = p / px
            for s, k in variants:
                if lat(s, d, lower[1], r) > budget_ms:
                    continue
                a = widest(lambda w, s=s, d=d, r=r: lat(s, d, w, r) <= budget_ms, lower[1])
                if a < 1.0 and lat.kind == "lut":  # a totals model is monotone in w
                    a = _wider_within(s, lat, d, a, r, budget_ms)
                at = a if k is None else equivalent_width(shr, s, d, a, r, lower[1])
                if at is None or (k is not None and s.macs(d, a, r) == shr.macs(d, a, r)):
                    continue  # below the box, or rounding changed nothing
                cands.append({"d": d, "w": a, "r": r, "resolution": p, "round_to": k,
                              "predicted": float(pred(d, at, r)),
                              "latency_ms": lat(s, d, a, r), "macs": s.macs(d, a, r)})
    if not cands:
        where = reach(shr, lat, budget_ms, lower)
        smallest = lat(shr, ds[-1], lower[1], pmin / px)
        if where is not None:
            name = {"d": "depth", "w": "width", "r": "resolution"}[where[0]]
            hint = (f"the {name} chain reaches it at {where[0]}={where[1]:.3f}: `dwrprune "
                    "prune` extends the collection there, or lower the bounds")
        else:
            point, ms = fastest(shr, lat)
            at = f"d={point[0]:.3f} w={point[1]:.3f} r={point[2]:.3f}"
            hint = (f"no single axis reaches it; lower the bounds of several (--lower-bounds; "
                    f"the fastest point, {at}, is modelled at {ms:.3f} ms)" if ms <= budget_ms
                    else f"the model itself cannot go that fast: its fastest point, {at}, is "
                    f"modelled at {ms:.3f} ms; raise the latency budget")
        raise LatencyOutOfReach(f"no model in the searched box reaches {budget_ms:.3f} ms on "
                                f"{lat.target.key()} (the smallest modelled: {smallest:.3f} "
                                f"ms); {hint}", budget_ms, where)
    cands.sort(key=lambda c: -c["predicted"])  # stable: unrounded first on a tie
    return {"budget_ms": budget_ms, "best": cands[0], "runners_up": cands[1:5]}


def choose_under_latency(pred, shr: Shrinker, lat: LatencyModel, budget_ms: float,
                         lower: tuple[float, float, float], tolerance: float = TOLERANCE,
                         repeats: int = 20, attempts: int = 6,
                         reference: Reference | None = None,
                         round_to: int | None = None) -> dict:
    """:func:`solve_latency` (``round_to``: weigh rounded widths too), then the choice
    measured for real (beside ``reference`` for a fraction of the original's latency, see
    :func:`measure_ms`).  The model only steers:
    while the choice measures over the budget by more than ``tolerance``, the modelled
    budget is stepped down by the overshoot; while under by more, up (never past one
    measured over).  Returns the feasible choice with the best predicted accuracy, its
    measured latency and the steps."""
    steps, model_budget, measured = [], budget_ms, {}  # measured: (d, w, r) -> timing
    under, over, best = 0.0, math.inf, None  # modelled budgets measured within / over
    for _ in range(attempts):
        sol = solve_latency(pred, shr, lat, model_budget, lower, round_to)
        b = sol["best"]
        key = (*(b[k] for k in "dwr"), b["round_to"])
        if key not in measured:  # the modelled budget moved but not always the choice
            out = shr.rounded(b["round_to"]).shrink(*key[:3])
            measured[key] = measure_ms(out.model, out.spec["input"]["resolution"],
                                       lat.target, repeats, reference=reference)
        m = measured[key]
        steps.append({"model_budget_ms": model_budget, **dict(zip("dwr", key, strict=False)),
                      "round_to": b["round_to"], "modelled_ms": b["latency_ms"], **m})
        if m["median_ms"] <= budget_ms * (1 + tolerance):
            under = max(under, model_budget)
            if best is None or b["predicted"] > best[0]["best"]["predicted"]:
                best = (sol, m)
            if m["median_ms"] >= budget_ms * (1 - tolerance):
                break  # within the tolerance either side: as close as timing can tell
        else:
            over = min(over, model_budget)
        model_budget *= budget_ms / m["median_ms"]
        if not under < model_budget < over and over < math.inf:  # stay inside the bracket
            model_budget = (under + over) / 2
    if best is None:
        raise DwrpruneError(f"after {attempts} tries the choice still measures "
                            f"{steps[-1]['median_ms']:.3f} ms, over {budget_ms:.3f} ms + "
                            f"{100 * tolerance:.0f}%: too noisy a target, or too tight a budget")
    return {**best[0], "measured": best[1], "steps": steps, "budget_ms": budget_ms}
