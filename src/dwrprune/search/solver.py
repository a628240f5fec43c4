"""Choose (d*, w*, r*): maximise the predicted accuracy under a MACs budget.

Step 1 (continuous, Lagrange/KKT): maximise F(d, w, r) subject to d * w^2 * r^2 = T and
lo <= d, w, r <= hi with SciPy's SLSQP from several feasible starts.  SLSQP solves the KKT
system; the multiplier mu is recovered from stationarity (grad F = mu grad C on the
variables not at a bound) and reported with the residual.

Step 2 (discrete, exact): d, w and r are realised as whole blocks, channels and pixels, and
the d w^2 r^2 model ignores the stem, the classifier and transition layers.  So we search the
realisable points near the continuous optimum -- a few block counts and pixel sizes either
side -- and for each, the largest width whose *exact* MACs (from the shrinker's cost query)
fit the budget, found by bisection since MACs never decrease with w.  The best predicted
accuracy wins; runners-up are returned too.  No returned point exceeds the budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize

from ..cost.rounding import approx_cost_ratio
from ..errors import DwrpruneError


class BudgetOutOfReach(DwrpruneError):
    """No realisable point within the bounds fits the budget."""


@dataclass
class ContinuousOptimum:
    d: float
    w: float
    r: float
    predicted: float
    mu: float
    kkt_residual: float


@dataclass
class Candidate:
    d: float
    w: float
    r: float
    kept_blocks: int
    resolution: int
    macs: int
    macs_ratio: float
    predicted: float
    round_to: int | None = None  # channel counts rounded down to this multiple (latency
    # budgets weigh rounded widths too); ``predicted`` is then that of the unrounded width
    # of equal MACs

    def key(self) -> list:
        """What the pruned model is made from: [d, w, r], and the rounding where there is
        one (a final model made for another key is another model)."""
        return [self.d, self.w, self.r] + ([self.round_to] if self.round_to else [])


@dataclass
class Solution:
    budget: float
    base_macs: int
    continuous: ContinuousOptimum | None  # None when chosen under a latency budget
    best: Candidate
    runners_up: list[Candidate]
    decision: dict | None = None  # how the choice was made (see pipeline.solve.choose)

    def to_dict(self) -> dict:
        return {"budget": self.budget, "base_macs": self.base_macs,
                "continuous": asdict(self.continuous) if self.continuous else None,
                "best": asdict(self.best),
                "runners_up": [asdict(c) for c in self.runners_up],
                "decision": self.decision}

    @classmethod
    def from_dict(cls, d: dict) -> Solution:
        """The inverse of :meth:`to_dict` (what plan.json stores)."""
        try:
            cont = ContinuousOptimum(**d["continuous"]) if d["continuous"] else None
            return cls(d["budget"], d["base_macs"], cont,
                       Candidate(**d["best"]), [Candidate(**c) for c in d["runners_up"]],
                       d.get("decision"))
        except (KeyError, TypeError) as e:
            raise DwrpruneError(f"not a stored solution ({type(e).__name__}: {e}); re-run "
                                "the plan stage") from None



def widest(fits: Callable[[float], bool], lo: float, steps: int = 14) -> float:
    """The widest w in [lo, 1] for which ``fits`` holds, given that it holds at ``lo`` and
    cost never decreases with w: 1 if it fits, else bisection (``steps`` halvings, about
    1e-4 in w).  The MACs and the latency solves both ask this."""
    if fits(1.0):
        return 1.0
    a, b = lo, 1.0
    for _ in range(steps):
        mid = (a + b) / 2
        a, b = (mid, b) if fits(mid) else (a, mid)
    return a


def whole_channel_widths(shr, lo: float, hi: float) -> list[float]:
    """The widths in (lo, hi] at which the widest channel group keeps a whole number of
    channels (so 1.0 is among them when hi reaches it): where latency can step."""
    size = max((g.size for g in shr.groups()), default=1)
    first = math.floor(lo * size + 1e-9) + 1
    return [k / size for k in range(first, math.floor(min(hi, 1.0) * size + 1e-9) + 1)]


def search_box(lower, pred, shr) -> tuple[float, float, float]:
    """The lower corner of the (d, w, r) box a solve searches: ``lower`` (the pipeline's
    ``lower_bounds``) or else the predictor's sampled range, with r never below the smallest
    input the model runs at."""
    lo = list(lower) if lower else list(pred.lower)
    lo[2] = max(lo[2], shr.min_resolution / shr.base_resolution)
    return tuple(lo)


def _grad(f: Callable, x: np.ndarray, h: float = 1e-5) -> np.ndarray:
    g = np.zeros(3)
    for i in range(3):
        e = np.zeros(3)
        e[i] = h
        g[i] = (f(x + e) - f(x - e)) / (2 * h)
    return g


def solve_continuous(F: Callable[[float, float, float], float], budget: float,
                     lower: tuple[float, float, float],
                     upper: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> ContinuousOptimum:
    """Lagrange/KKT optimum of F under d w^2 r^2 = budget within the box."""
    lo, hi = np.asarray(lower, float), np.asarray(upper, float)
    if approx_cost_ratio(*hi) < budget - 1e-12:
        raise DwrpruneError(f"budget {budget:g} exceeds what the upper bounds allow")
    if approx_cost_ratio(*lo) > budget + 1e-12:
        raise BudgetOutOfReach(
            f"budget {budget:g} is below what the bounds allow: at the lower bounds "
            f"d={lo[0]:.2f} w={lo[1]:.2f} r={lo[2]:.2f} the model still costs "
            f"{approx_cost_ratio(*lo):.3f} of its MACs; lower the bounds (collect samples "
            "further out) or raise the budget")

    def f(x):
        return float(F(*x))

    def cost(x):
        return approx_cost_ratio(*x) - budget

    best = None
    for start in _feasible_starts(budget, lo, hi):
        res = minimize(lambda x: -f(x), start, method="SLSQP", bounds=list(zip(lo, hi)),
                       constraints=[{"type": "eq", "fun": cost}],
                       options={"maxiter": 200, "ftol": 1e-10})
        if abs(cost(res.x)) > 1e-6:
            continue
        if best is None or -res.fun > -best.fun:
            best = res
    if best is None:
        raise BudgetOutOfReach(f"no feasible point found for budget {budget:g} within the "
                               "bounds")
    x = np.clip(best.x, lo, hi)
    gF, gC = _grad(f, x), _grad(lambda z: approx_cost_ratio(*z), x)
    free = (x > lo + 1e-6) & (x < hi - 1e-6)
    if free.any():
        mu = float(gF[free] @ gC[free] / max(gC[free] @ gC[free], 1e-12))
        resid = float(np.linalg.norm(gF[free] - mu * gC[free]))
    else:
        mu, resid = 0.0, 0.0
    return ContinuousOptimum(float(x[0]), float(x[1]), float(x[2]), f(x), mu, resid)


def _feasible_starts(budget: float, lo: np.ndarray, hi: np.ndarray) -> list[np.ndarray]:
    """Points on the constraint surface spread over the box (d, r chosen, w solved)."""
    starts = []
    for a in (0.25, 0.5, 0.75, 1.0):
        for b in (0.25, 0.5, 0.75, 1.0):
            d = lo[0] + a * (hi[0] - lo[0])
            r = lo[2] + b * (hi[2] - lo[2])
            w = np.sqrt(budget / max(d * r * r, 1e-12))
            if lo[1] <= w <= hi[1]:
                starts.append(np.array([d, w, r]))
    if not starts:
        starts.append(np.clip(np.full(3, budget ** 0.2), lo, hi))
    return starts


def refine(F: Callable, macs_of: Callable[[float, float, float], int], base_macs: int,
           budget: float, opt: ContinuousOptimum, n_blocks: int, base_resolution: int,
           lower: tuple[float, float, float], min_resolution: int = 1,
           block_radius: int = 2, pixel_radius: int = 3, top: int = 5) -> list[Candidate]:
    """Realisable points near ``opt`` whose exact MACs fit the budget, best first."""
    limit = budget * base_macs
    lo_d, lo_w, lo_r = lower
    if n_blocks > 0:
        k0 = round(opt.d * n_blocks)
        ks = [k for k in range(k0 - block_radius, k0 + block_radius + 1)
              if 0 <= k <= n_blocks and k / n_blocks >= lo_d - 1e-9]
        ds = [k / n_blocks for k in ks] or [1.0]
    else:
        ds = [1.0]
    px0 = round(opt.r * base_resolution)
    pmin = max(min_resolution, int(np.ceil(lo_r * base_resolution - 1e-9)))
    pxs = [p for p in range(px0 - pixel_radius, px0 + pixel_radius + 1)
           if pmin <= p <= base_resolution]
    out = []
    for d in ds:
        for px in pxs:
            r = px / base_resolution
            if macs_of(d, lo_w, r) > limit:
                continue
            a = widest(lambda w, d=d, r=r: macs_of(d, w, r) <= limit, lo_w)
            m = macs_of(d, a, r)
            out.append(Candidate(d, a, r, round(d * n_blocks), px, m, m / base_macs,
                                 float(F(d, a, r))))
    if not out:
        raise BudgetOutOfReach(
            f"no realisable point near the optimum fits budget {budget:g} (exact MACs); the "
            f"smallest nearby point costs more. Lower the bounds or raise the budget")
    out.sort(key=lambda c: -c.predicted)
    return out[:top]


def solve(F: Callable, macs_of: Callable, base_macs: int, budget: float,
          lower: tuple[float, float, float], n_blocks: int, base_resolution: int,
          min_resolution: int = 1, upper=(1.0, 1.0, 1.0)) -> Solution:
    """Continuous KKT optimum, then the best realisable point under exact MACs."""
    if not 0.0 < budget < 1.0:
        raise DwrpruneError(f"budget must be in (0, 1) (fraction of the original MACs), "
                            f"got {budget}")
    if n_blocks == 0:  # depth cannot move: solve over (w, r) only
        lower = (1.0, lower[1], lower[2])
    opt = solve_continuous(F, budget, lower, upper)
    cands = refine(F, macs_of, base_macs, budget, opt, n_blocks, base_resolution, lower,
                   min_resolution)
    return Solution(budget, base_macs, opt, cands[0], cands[1:])
