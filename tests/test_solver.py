import numpy as np
import pytest

from dwrprune import DwrpruneError
from dwrprune.cost.rounding import approx_cost_ratio
from dwrprune.search.solver import solve, solve_continuous


def F(d, w, r):
    return (1 - 0.3 * (1 - d) ** 2) * (1 - 0.6 * (1 - w) ** 2) * (1 - 0.2 * (1 - r) ** 2)


@pytest.mark.parametrize("budget", [0.25, 0.5, 0.75])
def test_continuous_optimum_satisfies_kkt(budget):
    opt = solve_continuous(F, budget, (0.2, 0.2, 0.2))
    assert approx_cost_ratio(opt.d, opt.w, opt.r) == pytest.approx(budget, abs=1e-6)
    assert opt.kkt_residual < 1e-3
    grid = np.linspace(0.2, 1, 41)
    best = max(F(d, np.sqrt(budget / (d * r * r)), r) for d in grid for r in grid
               if 0.2 <= np.sqrt(budget / (d * r * r)) <= 1)
    assert opt.predicted >= best - 1e-4


def _exact_macs(n_blocks=7, base_res=28):
    def macs(d, w, r):  # a discrete cost: whole blocks, 16 channels, whole pixels, a stem
        k = int(np.floor(n_blocks * d + 0.5))
        c = max(1, int(np.floor(16 * w)))
        px = int(np.floor(base_res * r + 0.5))
        return 1000 * px * px + (3 + k) * c * c * px * px

    return macs


@pytest.mark.parametrize("budget", [0.3, 0.5])
def test_refined_point_never_exceeds_budget(budget):
    macs = _exact_macs()
    base = macs(1, 1, 1)
    sol = solve(F, macs, base, budget, (0.2, 0.2, 0.3), n_blocks=7, base_resolution=28)
    for c in [sol.best] + sol.runners_up:
        assert c.macs <= budget * base and c.macs == macs(c.d, c.w, c.r)
    assert sol.best.predicted >= max(c.predicted for c in sol.runners_up)
    assert sol.best.resolution == round(sol.best.r * 28)


@pytest.mark.parametrize("budget,match", [(0, "budget must be in"), (1.2, "budget must be in"),
                                          (0.001, "below what the bounds allow")])
def test_bad_budgets(budget, match):
    macs = _exact_macs()
    with pytest.raises(DwrpruneError, match=match):
        solve(F, macs, macs(1, 1, 1), budget, (0.5, 0.5, 0.5), n_blocks=7, base_resolution=28)


def test_model_without_blocks_solves_over_width_and_resolution():
    macs = _exact_macs(n_blocks=0)
    sol = solve(F, macs, macs(1, 1, 1), 0.5, (0.2, 0.2, 0.3), n_blocks=0, base_resolution=28)
    assert sol.best.d == 1.0
