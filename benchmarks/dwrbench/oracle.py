"""The iso-cost oracle: ground truth for the choice of (d, w, r) at one budget.

Take realisable points whose exact MACs lie just under the budget (at most ``tol`` of the
original MACs under it: 0.03 keeps ratios in [0.47, 0.50] for budget 0.5): the three
one-axis points, the point a pipeline run chose, and a spread over (d, r) with w solved to
meet the budget.  Prune each from the original (blocks in the run's saved ranking, BatchNorm
re-calibrated), fine-tune it with the benchmark's recipe over seeds, and record validation
and test accuracy.  Then:

* **regret** of a choice = best mean test accuracy on the surface - the chosen point's
  (reported), and the same on validation accuracy (what a decision rule is selected by);
* **rank correlation** (Spearman) between a predictor's values at the points and their mean
  validation accuracy.

Points are ranked and selected by validation accuracy only; test accuracy is for the report.
Rows are appended to ``oracle.csv`` as each (point, seed) finishes, so a stopped run resumes.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from dwrprune.errors import DwrpruneError
from dwrprune.pipeline import (
    DataSource,
    Run,
    build_shrinker,
    largest_under,
    one_axis_point,
    solve_budget,
)
from dwrprune.pipeline.executors import (
    Executor,
    LocalExecutor,
    Node,
    PortableModel,
    Resources,
    raise_failures,
    run_graph,
)
from dwrprune.pipeline.points import ONE_AXIS
from dwrprune.pruning.shrink import Shrinker
from dwrprune.training.engine import TrainConfig

from .bench import append_row, finetune_and_score

FIELDS = ["budget", "label", "kind", "d", "w", "r", "kept_blocks", "resolution", "macs_ratio",
          "iso", "seed", "val_acc", "val_loss", "test_acc", "predicted", "finetune_seconds",
          "timestamp"]


@dataclass(frozen=True)
class OraclePoint:
    label: str
    kind: str  # width-only | depth-only | resolution-only | grid | choice
    d: float
    w: float
    r: float
    macs_ratio: float
    iso: bool  # within the tolerance under the budget (else a reference point only)


def solve_width(shr: Shrinker, d: float, r: float, limit: float) -> float | None:
    """The widest realisable w whose exact MACs at (d, ., r) stay within ``limit``."""
    return largest_under([i / 1000 for i in range(50, 1001)],
                         lambda w: shr.macs(d, w, r) <= limit)


def surface_points(shr: Shrinker, budget: float, depths: list[float],
                   resolutions: list[float], tol: float = 0.03,
                   choices: dict[str, tuple[float, float, float]] | None = None
                   ) -> list[OraclePoint]:
    """The oracle's points on the budget surface (see the module docstring)."""
    base = shr.macs(1, 1, 1)
    limit = budget * base
    n, px = len(shr.blocks), shr.base_resolution

    def point(label, kind, d, w, r):
        ratio = shr.macs(d, w, r) / base
        return OraclePoint(label, kind, round(d, 6), round(w, 6), round(r, 6), ratio,
                           budget - tol <= ratio <= budget)

    pts = []
    for name, axis in ONE_AXIS:
        p = one_axis_point(shr, axis, budget)
        if p is not None:
            pts.append(point(name, name, *p))
    for d in depths:
        d = round(d * n) / n if n else 1.0
        for r in resolutions:
            r = max(round(r * px), shr.min_resolution) / px
            if (d, r) == (1.0, 1.0):
                continue  # that is width-only
            w = solve_width(shr, d, r, limit)
            if w is not None and w < 1.0:
                p = point(f"d{d:.3f}-r{r:.3f}", "grid", d, w, r)
                if p.iso and not any(same_model(q, p) for q in pts):
                    pts.append(p)
    for label, (d, w, r) in (choices or {}).items():
        p = point(label, "choice", d, w, r)
        if not any(same_model(q, p) for q in pts):
            pts.append(p)
    return pts


def same_model(a, b) -> bool:
    """Two points that realise the same pruned model (uniform width: the same blocks, input
    side and MACs), e.g. w=0.749 and w=0.750 when both keep the same channels."""
    return (round(a.d, 6), round(a.r, 6), round(a.macs_ratio, 9)) == (
        round(b.d, 6), round(b.r, 6), round(b.macs_ratio, 9))


def prune_point(shr: Shrinker, data: DataSource, point: tuple[float, float, float], seed: int,
                recal_batches: int):
    """``point`` pruned from the original (seeded), its BatchNorm statistics re-calibrated
    on ``recal_batches`` shuffled training batches: how every oracle point starts."""
    torch.manual_seed(seed)
    return shr.shrink(*point, recalibrate=lambda res: data.loader(
        "train", res, shuffle=True, seed=seed), recal_batches=recal_batches)


class OracleJob:
    """One (point, seed): shrink from the original, fine-tune with the recipe, score."""

    def __init__(self, model: nn.Module, data: DataSource, cfg, block_order, criterion,
                 recipe: TrainConfig, subset: int | None, progress: bool):
        self.original, self.data, self.cfg = PortableModel(model), data, cfg
        self.block_order, self.criterion = block_order, criterion
        self.recipe, self.subset, self.progress = recipe, subset, progress

    def __call__(self, p: OraclePoint, seed: int) -> dict:
        shr = build_shrinker(self.original.model, self.cfg, self.data,
                             block_order=self.block_order,
                             block_order_criterion=self.criterion)
        out = prune_point(shr, self.data, (p.d, p.w, p.r), seed,
                          max(self.cfg.recal_batches, 20))
        res = out.spec["input"]["resolution"]
        scores = finetune_and_score(out.model, self.data, res, self.recipe, seed, self.subset,
                                    self.progress, f"{p.label} s{seed}")
        kept = len(shr.blocks) - len(out.spec["arch"]["removed_blocks"])
        return {**asdict(p), **scores, "seed": seed, "kept_blocks": kept, "resolution": res,
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S")}


def choice_variants(pred, shr: Shrinker, budget: float, lower,
                    sigmas: tuple[float, ...] = (0.0, 1.0, 2.0)) -> dict:
    """The choices a run's predictor makes at ``budget`` under each decision rule: the plain
    optimum and the hedged choice at each of ``sigmas`` (> 0) standard deviations."""
    out = {}
    for z in sigmas:
        if z > 0 and not pred.jackknife and pred.noise_sd is None:
            continue
        out["choice" + (f"-z{z:g}" if z else "")] = solve_budget(pred, shr, budget, lower,
                                                                 z).best
    return out


def read_rows(csv_path: str | Path) -> list[dict]:
    p = Path(csv_path)
    if not p.exists():
        return []
    with open(p, newline="") as f:
        return list(csv.DictReader(f))


def run_oracle(model: nn.Module, data: DataSource, run_dir: str | Path, budget: float,
               seeds: list[int], recipe: TrainConfig, out: str | Path, *,
               depths: list[float], resolutions: list[float], tol: float = 0.03,
               subset: int | None = None, extra_seeds: dict[str, list[int]] | None = None,
               progress: bool = True, executor: Executor | None = None,
               choice_tag: str = "", resources: Resources | None = None) -> Path:
    """Fine-tune every surface point of ``budget`` for ``seeds`` (and ``extra_seeds`` per
    label), skipping rows already in ``out/oracle.csv``; the run folder ``run_dir`` gives
    the block ranking, the pipeline config and the predictor (its value at every point is
    recorded, and its choices under each decision rule of :func:`choice_variants` are
    points).
    ``choice_tag`` suffixes the choices' labels (``choice@TAG``), so the choices of a second
    run folder (another pipeline seed) are measured beside the first's in one CSV.
    ``executor`` runs the fine-tunes (Ray: side by side, each asking for ``resources``, a
    fraction of a GPU to share one); rows are appended by the driver alone."""
    run = Run(run_dir)
    cfg, _ = run.load_config()
    pred, _ = run.predictor()
    order, criterion = run.block_ranking()
    shr = build_shrinker(model, cfg, None, block_order=order, block_order_criterion=criterion)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "oracle.csv"
    job = OracleJob(model, data, cfg, order, criterion, recipe, subset,
                    progress and (executor is None or executor.name == "local"))

    rows = read_rows(csv_path)
    chosen = {label + (f"@{choice_tag}" if choice_tag else ""): (c.d, c.w, c.r)
              for label, c in choice_variants(pred, shr, budget, cfg.lower_bounds).items()}
    done = {(r["label"], float(r["budget"]), int(r["seed"])) for r in rows}
    jobs = [(p, s) for p in surface_points(shr, budget, depths, resolutions, tol, chosen)
            for s in sorted(set(seeds) | set((extra_seeds or {}).get(p.label, [])))
            if (p.label, budget, s) not in done]
    if not jobs:
        return csv_path
    bar = tqdm(total=len(jobs), desc=f"oracle {budget:g}", unit="job", disable=not progress)

    def node(p: OraclePoint, seed: int) -> Node:
        def finished(row):
            append_row(csv_path, {**row, "budget": budget,
                                  "predicted": pred(p.d, p.w, p.r)}, FIELDS)
            bar.update(1)
            bar.write(f"[oracle] {p.label:18s} s{seed} d={p.d:.3f} w={p.w:.3f} "
                      f"r={p.r:.3f} MACs {100 * p.macs_ratio:.1f}% val "
                      f"{100 * row['val_acc']:.2f} test {100 * row['test_acc']:.2f}")
        return Node(f"{p.label} s{seed}", lambda: (job, (p, seed)), finished,
                    resources=resources or Resources())

    failures = run_graph([node(p, s) for p, s in jobs], executor or LocalExecutor())
    bar.close()
    raise_failures(failures, "oracle jobs", str(csv_path))
    return csv_path


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _std(xs: list[float]) -> float:
    if len(xs) < 2:
        return 0.0
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


RANK_TARGET = 0.8  # the Spearman correlation the decision issue asks of a predictor


def _perfect_predictor_draws(values: list[list[float]], draws: int, seed: int) -> np.ndarray:
    """Spearman correlations of the points' estimated true values against ``draws`` redraws
    of their noisy means (one list of seed accuracies per point; empty: nothing to rank).
    True values: each mean shrunk toward the median of the means by the between-point
    variance over the variance of that mean.  The between-point variance is taken from the
    median absolute deviation of the means (less the seeds' pooled variance), so that one
    far point (a one-axis point a few points below the rest) cannot make a flat cluster
    look spread out, which would leave the cluster's noisy means unshrunk and overstate how
    well they can be ranked."""
    from scipy.stats import spearmanr

    means = np.array([_mean(v) for v in values])
    s2 = sum((x - _mean(v)) ** 2 for v in values for x in v) / sum(len(v) - 1 for v in values)
    noise = s2 / np.array([len(v) for v in values])
    centre = float(np.median(means))
    spread = (1.4826 * float(np.median(np.abs(means - centre)))) ** 2
    if spread == 0.0:  # more than half the means equal: the MAD says nothing; use them all
        spread = float(means.var(ddof=1))
    true_var = max(spread - float(noise.mean()), 0.0)
    if true_var == 0.0:
        return np.zeros(0)
    truth = centre + (means - centre) * true_var / (true_var + noise)
    rng = np.random.default_rng(seed)
    return np.array([spearmanr(truth, truth + rng.normal(0, np.sqrt(noise))).statistic
                     for _ in range(draws)])


def rank_noise_ceiling(values: list[list[float]], draws: int = 2000, seed: int = 0,
                       target: float = RANK_TARGET) -> tuple[float, float]:
    """What a perfect predictor would reach against the means of ``values`` (one list of
    seed accuracies per point): its expected Spearman correlation with them, and the
    probability that it reaches ``target`` (see :func:`_perfect_predictor_draws`).
    (0, 0) when the points cannot be told apart; NaNs without a point measured twice."""
    if sum(len(v) - 1 for v in values) == 0 or len(values) < 3:
        return float("nan"), float("nan")
    rho = _perfect_predictor_draws(values, draws, seed)
    if rho.size == 0:
        return 0.0, 0.0
    return float(rho.mean()), float((rho >= target - 1e-12).mean())


def rows_by_point(rows: list[dict], budget: float) -> dict[str, list[dict]]:
    """The oracle rows of ``budget``, by point label (one row per seed)."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        if abs(float(r["budget"]) - budget) < 1e-9:
            by.setdefault(r["label"], []).append(r)
    return by


def remeasure_reliability(vals: list[dict[int, float]], k: int,
                          target: float = RANK_TARGET) -> tuple[float, float, int]:
    """What measuring every point again at the final horizon ranks: the mean of ``k`` seeds
    of each point (``vals``: seed -> accuracy per point) against the mean of its other
    seeds, over every choice of ``k`` of the seeds that all points have.  Returns the mean
    Spearman correlation, the fraction of choices reaching ``target`` and their number;
    NaNs and 0 without at least ``k`` + 1 shared seeds and three points."""
    from scipy.stats import spearmanr

    shared = sorted(set.intersection(*(set(v) for v in vals))) if vals else []
    if len(vals) < 3 or k < 1 or len(shared) < k + 1:
        return float("nan"), float("nan"), 0
    rhos = []
    for sub in combinations(shared, k):
        mine = [sum(v[s] for s in sub) / k for v in vals]
        rest = [sum(x for s, x in v.items() if s not in sub) / (len(v) - k) for v in vals]
        rho = spearmanr(mine, rest).statistic
        rhos.append(0.0 if math.isnan(rho) else float(rho))
    return (sum(rhos) / len(rhos), sum(r >= target - 1e-12 for r in rhos) / len(rhos),
            len(rhos))


def seed_group_shift(rows: list[dict], budget: float, first: set[int], second: set[int]
                     ) -> dict[str, tuple[float, float, int]]:
    """Whether two groups of seeds measure the same quantity (seeds run on another machine,
    say): per point that has seeds of both, the mean of ``second``'s accuracies minus that
    of ``first``'s; for ``val`` and ``test``, the mean of those differences over the points,
    its standard error and the number of points (NaNs with fewer than two)."""
    out = {}
    for key in ("val", "test"):
        diffs = []
        for rs in rows_by_point(rows, budget).values():
            a = [float(r[f"{key}_acc"]) for r in rs if int(r["seed"]) in first]
            b = [float(r[f"{key}_acc"]) for r in rs if int(r["seed"]) in second]
            if a and b:
                diffs.append(_mean(b) - _mean(a))
        out[key] = ((_mean(diffs), _std(diffs) / math.sqrt(len(diffs)), len(diffs))
                    if len(diffs) > 1 else (float("nan"), float("nan"), len(diffs)))
    return out


def extrapolate_horizon(short: float, long: float, t_short: int, t_long: int, t_target: int,
                        power: float = 0.5) -> float:
    """Accuracy at ``t_target`` fine-tune steps from the same point measured after
    ``t_short`` and ``t_long`` steps, on the learning curve a - b * t**-power through both
    (a multi-fidelity candidate: the target the user gets, read off two cheaper horizons)."""
    if not 0 < t_short < t_long or power <= 0:
        raise DwrpruneError(f"extrapolation needs 0 < t_short < t_long and power > 0, got "
                            f"{t_short}, {t_long}, {power}")
    g = [t ** -power for t in (t_short, t_long, t_target)]
    return long + (long - short) * (g[1] - g[2]) / (g[0] - g[1])


def corrected_predictor(base, X, y, ridge: float = 1e-3):
    """``base`` (a predictor of cheap, short-horizon accuracies) plus a linear correction
    c0 + c . (1 - x) fitted by ridge least squares to what it misses at a few final-horizon
    samples ``X`` (n, 3), ``y`` (a multi-fidelity candidate: many cheap samples corrected by
    a few expensive ones).  Returns a callable (d, w, r) -> accuracy."""
    X, y = np.asarray(X, float), np.asarray(y, float)
    if X.ndim != 2 or X.shape[1] != 3 or len(X) != len(y) or len(X) < 4:
        raise DwrpruneError(f"a linear correction needs at least 4 final-horizon samples as "
                            f"an (n, 3) array and n accuracies, got {X.shape} and {y.shape}")
    A = np.hstack([np.ones((len(X), 1)), 1 - X])
    miss = y - np.array([base(*x) for x in X])
    coef = np.linalg.solve(A.T @ A + ridge * np.eye(4), A.T @ miss)
    return lambda d, w, r: float(base(d, w, r) + coef @ [1.0, 1 - d, 1 - w, 1 - r])


def summarise_oracle(rows: list[dict], budget: float, predictor=None) -> dict:
    """Per point: mean and std over seeds of validation and test accuracy; the best point by
    mean validation accuracy; regrets of the recorded choice and of every one-axis point
    (best mean test on the iso-cost surface minus theirs); Spearman between the predictor
    (``predictor`` or the recorded values) and mean validation accuracy over iso points."""
    from scipy.stats import spearmanr

    by = rows_by_point(rows, budget)
    if not by:
        raise DwrpruneError(f"no oracle rows for budget {budget}")
    pts = []
    for label, rs in by.items():
        d, w, r = (float(rs[0][k]) for k in "dwr")
        val, test = [float(x["val_acc"]) for x in rs], [float(x["test_acc"]) for x in rs]
        pts.append({"label": label, "kind": rs[0]["kind"], "d": d, "w": w, "r": r,
                    "macs_ratio": float(rs[0]["macs_ratio"]),
                    "iso": rs[0]["iso"] == "True",
                    "seeds": len(rs), "val": _mean(val), "val_std": _std(val),
                    "test": _mean(test), "test_std": _std(test),
                    "predicted": predictor(d, w, r) if predictor else float(rs[0]["predicted"])})
    iso = [p for p in pts if p["iso"]]
    best_test = max(p["test"] for p in iso)
    best_val = max(iso, key=lambda p: p["val"])
    best_val_acc = best_val["val"]
    for p in pts:
        p["regret"] = best_test - p["test"]
        p["val_regret"] = best_val_acc - p["val"]  # what rules may be selected by
    rho = spearmanr([p["predicted"] for p in iso], [p["val"] for p in iso]).statistic \
        if len(iso) > 2 else float("nan")
    # the oracle's own rank reliability: two seeds of the same points, ranked against each
    # other (a predictor is judged against means that are this noisy); with a third seed,
    # the mean over every pair of seeds that share at least three points
    vals = [{int(x["seed"]): float(x["val_acc"]) for x in by[p["label"]]} for p in iso]
    seeds = sorted({s for v in vals for s in v})
    pairs = []
    for i, a in enumerate(seeds):
        for b in seeds[i + 1:]:
            both = [(v[a], v[b]) for v in vals if a in v and b in v]
            if len(both) > 2:
                pairs.append((a, b, len(both),
                              float(spearmanr(*zip(*both, strict=True)).statistic)))
    # each seed against the mean of the others: what one more measurement of exactly the
    # oracle's quantity, one seed per point, reaches against means like the predictor's
    held_out = []
    for a in seeds:
        both = [(v[a], _mean([x for s, x in v.items() if s != a])) for v in vals
                if a in v and len(v) > 1]
        if len(both) > 2:
            held_out.append((a, len(both), float(spearmanr(*zip(*both, strict=True)).statistic)))
    split = _mean([p[3] for p in pairs]) if pairs else float("nan")
    ceiling, ceiling_pass = rank_noise_ceiling([list(v.values()) for v in vals])
    remeasure = [(k, *remeasure_reliability(vals, k)) for k in (1, 2, 3)]
    return {"budget": budget, "points": sorted(pts, key=lambda p: -p["val"]),
            "best_by_val": best_val["label"], "best_test": best_test,
            "spearman": float(rho), "split_half": float(split),
            "split_half_points": max((p[2] for p in pairs), default=0), "seed_pairs": pairs,
            "held_out_seeds": held_out,
            "remeasure": [x for x in remeasure if x[3]],
            "noise_ceiling": ceiling, "noise_ceiling_pass": ceiling_pass}


def adaptive_bn_scores(model: nn.Module, data: DataSource, run_dir: str | Path,
                       points: list[dict], batches: int = 50, seed: int = 0) -> list[dict]:
    """EagleEye's adaptive-BN proxy at each of ``points`` (dicts with d, w, r): pruned from
    the original as the oracle prunes it (the run's block ranking and options), BatchNorm
    re-calibrated on ``batches`` training batches, then scored on the validation split with
    no fine-tune at all.  A candidate ranking that costs seconds per point (about 13 on
    ResNet-20 with 2 cores)."""
    from dwrprune.training.engine import evaluate

    run = Run(run_dir)
    cfg, _ = run.load_config()
    order, criterion = run.block_ranking()
    shr = build_shrinker(model, cfg, data, block_order=order, block_order_criterion=criterion)
    scores = []
    for p in points:
        out = prune_point(shr, data, (p["d"], p["w"], p["r"]), seed, batches)
        ev = evaluate(out.model, data.loader("val", out.spec["input"]["resolution"]))
        scores.append({"val_acc": ev.accuracy, "val_loss": ev.loss})
    return scores


def default_grid(shr: Shrinker) -> tuple[list[float], list[float]]:
    """A spread over (d, r): about four realisable depths down to 55% of the blocks, and
    input sides down to about 85% in steps of two pixels."""
    n, px = len(shr.blocks), shr.base_resolution
    ks = list(range(n, max(int(0.55 * n + 0.999), 1) - 1, -1))
    step = max(1, len(ks) // 4)
    depths = sorted({round(k / n, 6) for k in ks[::step]}, reverse=True) if n else [1.0]
    res = sorted({round(p / px, 6) for p in range(px, max(int(0.84 * px), shr.min_resolution)
                                                   - 1, -2)}, reverse=True)
    return depths, res


__all__ = ["FIELDS", "OraclePoint", "adaptive_bn_scores", "choice_variants", "default_grid",
           "extrapolate_horizon", "prune_point", "read_rows", "run_oracle", "solve_width",
           "summarise_oracle", "surface_points"]
