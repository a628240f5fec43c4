"""Stage 3: the best realisable (d, w, r) under a budget, for one budget or many."""

from __future__ import annotations

import numpy as np

from ..predictor import Predictor
from ..shrink import Shrinker
from ..solver import Solution, solve
from .config import PipelineConfig
from .run import Run


def exact_cost_grid(shrinker: Shrinker, d: float, lower: list[float], points: int = 25) -> dict:
    """Exact MACs ratios over a (w, r) grid at depth ``d``: the budget contour of the report."""
    base = shrinker.macs(1, 1, 1)
    ws = np.linspace(lower[1], 1, points)
    rs = np.linspace(max(lower[2], shrinker.min_resolution / shrinker.base_resolution), 1,
                     points)
    ratio = [[shrinker.macs(d, float(w), float(r)) / base for w in ws] for r in rs]
    return {"d": d, "w": ws.tolist(), "r": rs.tolist(), "ratio": ratio}


def solve_budget(pred: Predictor, shrinker: Shrinker, budget: float,
                 lower: list[float] | None = None) -> Solution:
    """Stage 3: the best realisable (d, w, r) under ``budget`` for a fitted predictor."""
    lo = list(lower) if lower is not None else list(pred.lower)
    lo[2] = max(lo[2], shrinker.min_resolution / shrinker.base_resolution)
    lo = [min(max(v, 1e-3), 1.0) for v in lo]
    return solve(pred, shrinker.macs, shrinker.macs(1, 1, 1), budget, tuple(lo),
                 len(shrinker.blocks), shrinker.base_resolution, shrinker.min_resolution)


def plan_run(run: Run, shrinker: Shrinker, cfg: PipelineConfig,
             budgets: list[float] | None = None) -> list[dict]:
    """Solve every budget (default: the run's own) from one fitted predictor.  Writes
    plans.json (every budget) and, when the run's own budget is among them, plan.json (what
    the final stage prunes to).  Another budget for the final model is a new run setting:
    ``dwrprune prune --budget B`` on the same folder reuses the collection."""
    budgets = list(budgets) if budgets else [cfg.budget]
    for b in budgets:  # every budget checked before any is solved
        cfg.replace(budget=b)
    pred, _ = run.predictor()
    rows = []
    for b in budgets:
        sol = solve_budget(pred, shrinker, b, cfg.lower_bounds)
        params = shrinker.shrink(sol.best.d, sol.best.w, sol.best.r).params
        rows.append({"budget": b, "solution": sol, "params": params})
    with run.lock():
        run.save_plans([{**r, "solution": r["solution"].to_dict()} for r in rows])
        own = next((r for r in rows if abs(r["budget"] - cfg.budget) < 1e-12), None)
        if own is not None:
            run.save_plan(own["budget"], own["solution"],
                          exact_cost_grid(shrinker, own["solution"].best.d, pred.lower))
    return rows
