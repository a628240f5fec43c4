"""The methods the benchmark compares: each turns (original model, budget) into a pruned
model at or just under the budget (exact MACs), or says it is infeasible."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from dwrprune.cost import count_macs
from dwrprune.pipeline import (
    DataSource,
    PipelineConfig,
    Run,
    build_shrinker,
    collect,
    fit_samples,
    one_axis_point,
    solve_budget,
)
from dwrprune.pipeline.solve import drop_reference
from dwrprune.pruning.shrink import Shrinker
from dwrprune.pruning.surgery import record_layer_changes
from dwrprune.search.solver import BudgetOutOfReach
from dwrprune.training.engine import TrainConfig, evaluate, recalibrate_batchnorm, train


def finetune_and_score(model: nn.Module, data: DataSource, resolution: int,
                       recipe: TrainConfig, seed: int, subset: int | None = None,
                       progress: bool = False, desc: str = "finetune") -> dict:
    """The benchmark's fine-tune recipe (with ``seed``) on ``model`` in place, then its
    validation and test figures: one recipe for every method and every oracle point."""
    cfg = copy.deepcopy(recipe)
    cfg.seed = seed
    t0 = time.perf_counter()
    train(model, data.loader("train", resolution, shuffle=True, subset=subset, seed=seed),
          cfg, progress=progress, log=False, desc=desc)
    seconds = time.perf_counter() - t0
    model.eval()
    val = evaluate(model, data.loader("val", resolution))
    return {"finetune_seconds": seconds, "val_acc": val.accuracy, "val_loss": val.loss,
            "test_acc": evaluate(model, data.loader("test", resolution)).accuracy}


class Infeasible(Exception):
    """The method cannot reach the budget (e.g. depth alone, with every block removed)."""


@dataclass
class Pruned:
    model: nn.Module  # carries ``spec`` as ``model.dwrprune_spec``
    spec: dict
    note: str = ""
    collection_seconds: float = 0.0  # compute spent on samples (summed from the store)
    prepare_seconds: float = 0.0  # spent in the driver before the job (3d: the solver)


class Method(Protocol):
    name: str

    def prune(self, model: nn.Module, budget: float, seed: int, ctx: BenchContext) -> Pruned: ...


@dataclass
class BenchContext:
    data: DataSource
    out: Path
    pipeline: PipelineConfig
    recal_batches: int = 20
    progress: bool = False
    latency_target: object = None  # a LatencyTarget: budgets are latency fractions
    latency_reference: object = None  # a latency.Reference: the original, timed beside
    max_drop: bool = False  # budgets are allowed accuracy drops (points), not costs
    collection_seed: int | None = None  # 3d methods: every seed plans from this seed's
    # collection (None: each seed its own); the seed still drives pruning and fine-tune
    prepared: dict = field(default_factory=dict)  # what Method.prepare computed, per job

    def collection_of(self, seed: int) -> int:
        """The seed whose collection the 3d methods plan ``seed``'s rows from."""
        return seed if self.collection_seed is None else self.collection_seed

    @property
    def original_latency_ms(self) -> float:
        """The original's latency on the target when the budgets were set."""
        return self.latency_reference.ms

    def shrinker(self, model: nn.Module) -> Shrinker:
        """The one-axis methods' shrinker: the pipeline's options (criteria, round_to, width
        allocation, transitions), with blocks ranked data-free by weight norm, as the
        committed benchmark was run."""
        return build_shrinker(model, self.pipeline.replace(depth_criterion="weight_norm"),
                              self.data)

    def recal(self, res: int):
        """BatchNorm re-calibration images: the same for every method and seed (a seeded
        order, no random augmentation), so two methods that choose the same pruned model
        get the same model, and the same row (fine-tunes are seeded per epoch)."""
        return self.data.loader("train", res, shuffle=True, augment=False)


class OneAxis:
    """Prune one axis only, to the largest realisable setting under the budget."""

    def __init__(self, axis: str):
        self.axis = axis
        self.name = {"d": "depth-only", "w": "width-only", "r": "resolution-only"}[axis]

    def prune(self, model, budget, seed, ctx) -> Pruned:
        shr = ctx.shrinker(model)
        point = one_axis_point(shr, self.axis, budget)
        if point is None:
            raise Infeasible
        out = shr.shrink(*point, recalibrate=ctx.recal, recal_batches=ctx.recal_batches)
        return Pruned(out.model, out.spec, f"{self.axis}={point['dwr'.index(self.axis)]:.3f}")


class ThreeD:
    """The full pipeline.  :meth:`prepare` runs in the driver: one collection per seed
    (its jobs on the benchmark's executor, shared by all budgets) and the MAP fit;
    :meth:`prune` solves for the budget and shrinks to the chosen point, wherever it runs."""

    name = "3d"

    def prepare(self, model, todo: list[tuple[float, int]], ctx, executor) -> None:
        for seed in sorted({ctx.collection_of(s) for _, s in todo}):
            if ("3d", seed) in ctx.prepared:
                continue
            cfg = ctx.pipeline.replace(seed=seed)
            if ctx.max_drop:  # as prune --max-drop: the collection holds the reference
                cfg = cfg.replace(max_drop=max(b for b, _ in todo))
            run = Run(ctx.out / "3d" / f"seed{seed}")
            store = collect(model, ctx.data, cfg, run.path, progress=ctx.progress,
                            executor=executor, wait_for_lock=True)  # shared by processes
            collection = sum(s.seconds for s in store.samples())
            pred, _ = fit_samples(store, cfg)
            ctx.prepared[("3d", seed)] = {
                "predictor": pred, "block_order": run.block_ranking(),
                "collection_seconds": collection, "run": str(run.path),
                "reference": drop_reference(run) if ctx.max_drop else None}

    @staticmethod
    def prepared(seed, ctx, what: str = "3d"):
        """What :meth:`prepare` computed for the collection ``seed`` plans from."""
        return ctx.prepared[(what, ctx.collection_of(seed))]

    def shrinker(self, model, seed, ctx, data=None) -> Shrinker:
        """The seed's shrinker with the block ranking saved at its collection."""
        order, criterion = self.prepared(seed, ctx)["block_order"]
        return build_shrinker(model, ctx.pipeline.replace(seed=seed), data, block_order=order,
                              block_order_criterion=criterion)

    def point(self, model, budget, seed, ctx) -> tuple[tuple[float, float, float], float]:
        """The seed's choice at MACs ``budget`` (solved here: cheap once collected)."""
        t0 = time.perf_counter()
        p = self.prepared(seed, ctx)
        cfg = ctx.pipeline.replace(seed=seed)
        try:
            sol = solve_budget(p["predictor"], self.shrinker(model, seed, ctx), budget,
                               cfg.lower_bounds, cfg.min_gain_sigmas)
        except BudgetOutOfReach:
            raise Infeasible from None
        return (sol.best.d, sol.best.w, sol.best.r), time.perf_counter() - t0

    def prune(self, model, budget, seed, ctx) -> Pruned:
        return self._shrink(model, self.point(model, budget, seed, ctx)[0], seed, ctx)

    def _shrink(self, model, point, seed, ctx, round_to: int | None = None) -> Pruned:
        """(The solve ran inside the job, so its time is in the job's prune time.)"""
        d, w, r = point
        out = self.shrinker(model, seed, ctx, ctx.data).rounded(round_to).shrink(
            d, w, r, recalibrate=ctx.recal, recal_batches=ctx.recal_batches)
        cseed = ctx.collection_of(seed)
        return Pruned(out.model, out.spec, f"d={d:.3f} w={w:.3f} r={r:.3f}"
                      + (f" round_to={round_to}" if round_to else "")
                      + (f" (collection of seed {cseed})" if cseed != seed else ""),
                      self.prepared(seed, ctx)["collection_seconds"])


class ThreeDLatency(ThreeD):
    """The pipeline with a latency budget: ``budget`` is a fraction of the original model's
    measured latency on ``ctx.latency_target``; the choice is measured and stepped down."""

    name = "3d-latency"

    def prepare(self, model, todo, ctx, executor) -> None:
        super().prepare(model, todo, ctx, executor)
        from dwrprune.cost.latency import build_latency_model

        for seed in sorted({ctx.collection_of(s) for _, s in todo}):
            key = ("latency-model", seed)
            if key not in ctx.prepared:
                ctx.prepared[key] = build_latency_model(self.shrinker(model, seed, ctx),
                                                        ctx.latency_target)

    def prune(self, model, budget, seed, ctx) -> Pruned:
        from dwrprune.search.latency import LatencyOutOfReach, choose_under_latency
        from dwrprune.search.solver import search_box

        p, lat = self.prepared(seed, ctx), self.prepared(seed, ctx, "latency-model")
        shr = self.shrinker(model, seed, ctx)
        lo = search_box(ctx.pipeline.lower_bounds, p["predictor"], shr)
        # the latency model's milliseconds are those of the moment it was fitted: the
        # budget in them, and the check beside the original scaled to them too
        ref = replace(ctx.latency_reference, ms=lat.original_ms)
        try:
            res = choose_under_latency(p["predictor"], shr, lat, budget * lat.original_ms,
                                       lo, reference=ref,
                                       round_to=ctx.pipeline.latency_round_to)
        except LatencyOutOfReach:
            raise Infeasible from None
        k = res["best"]["round_to"]
        out = self._shrink(model, tuple(res["best"][x] for x in "dwr"), seed, ctx, k)
        out.note += (f"; measured {res['measured']['ratio']:.3f} of the original "
                     f"({len(res['steps'])} steps)")
        return out


class WithinDrop(ThreeDLatency):
    """The fastest model within an accuracy loss (``dwrprune prune --max-drop``): ``budget``
    is the largest allowed drop of hedged predicted validation accuracy (points) below the
    original; the point with the lowest latency on ``ctx.latency_target`` that keeps within it,
    the few fastest by the latency model measured for real and the fastest measured taken, as
    :func:`~dwrprune.pipeline.solve.plan_max_drop` does.  ``axes="w"``: width only (depth and
    resolution held at 1), from the same collection and predictor, so both answer the same
    question with the same information: how fast can the model get within this drop?  The
    drop is counted from the collection's reference sample (the original fine-tuned as
    briefly as the samples), as prune --max-drop counts it."""

    def __init__(self, axes: str = "dwr"):
        self.axes = axes
        self.name = "3d-drop" if axes == "dwr" else "width-only-drop"

    def prune(self, model, budget, seed, ctx) -> Pruned:
        from dwrprune.cost.latency import measure_ms
        from dwrprune.errors import DwrpruneError
        from dwrprune.search.solver import search_box
        from dwrprune.search.within_drop import solve_max_drop

        p, lat = self.prepared(seed, ctx), self.prepared(seed, ctx, "latency-model")
        shr = self.shrinker(model, seed, ctx)
        lo = search_box(ctx.pipeline.lower_bounds, p["predictor"], shr)
        if self.axes == "w":
            lo = (1.0, lo[1], 1.0)
        try:
            res = solve_max_drop(p["predictor"], shr, budget, lo, lat,
                                 reference=p["reference"],
                                 round_to=ctx.pipeline.latency_round_to)
        except DwrpruneError:
            raise Infeasible from None
        ref = replace(ctx.latency_reference, ms=lat.original_ms)
        timed = []
        for c in [res["best"], *res["runners_up"]][:3]:
            out = shr.rounded(c["round_to"]).shrink(c["d"], c["w"], c["r"])
            timed.append((measure_ms(out.model, out.spec["input"]["resolution"],
                                     ctx.latency_target, reference=ref)["ratio"], c))
        ratio, c = min(timed, key=lambda t: t[0])
        if ratio >= 1.0:  # as prune --max-drop: nothing within the drop is faster
            raise Infeasible
        out = self._shrink(model, (c["d"], c["w"], c["r"]), seed, ctx, c["round_to"])
        out.note += (f"; predicted drop {100 * c['drop']:.2f} + sd {100 * c['drop_sd']:.2f}; "
                     f"measured {ratio:.3f} of the original")
        return out


class UnderLatency:
    """Any MACs-budget method pruned to the largest model whose measured latency on
    ``ctx.latency_target`` is within ``budget`` x the original's, with the tolerance
    ``3d-latency``'s own check allows (:data:`~dwrprune.cost.latency.TOLERANCE`): bisection over
    the MACs budget it is given, each candidate timed round-robin beside the original (so
    the machine's drift since the budget was set does not move the limit)."""

    def __init__(self, inner: Method, steps: int = 7):
        self.inner, self.name, self.steps = inner, inner.name, steps

    def prepare(self, model, todo, ctx, executor) -> None:
        if hasattr(self.inner, "prepare"):
            self.inner.prepare(model, todo, ctx, executor)

    def prune(self, model, budget, seed, ctx) -> Pruned:
        from dwrprune.cost.latency import TOLERANCE, measure_ms

        limit = budget * ctx.original_latency_ms * (1 + TOLERANCE)
        lo, hi, best = 0.02, 0.98, None
        for _ in range(self.steps):
            mid = (lo + hi) / 2
            try:
                p = self.inner.prune(model, mid, seed, ctx)
            except Infeasible:
                lo = mid
                continue
            ms = measure_ms(p.model, p.spec["input"]["resolution"], ctx.latency_target,
                            reference=ctx.latency_reference)
            if ms["median_ms"] <= limit:
                best, lo = p, mid
                best.note = f"{p.note}; MACs budget {mid:.3f}: {ms['median_ms']:.3f} ms"
            else:
                hi = mid
        if best is None:
            raise Infeasible
        return best


class TorchPruningGlobal:
    """Torch-Pruning's recommended recipe for a MACs target: MetaPruner with global
    group-magnitude (L2) importance, stepped iteratively until MACs fall under the target."""

    name = "torch-pruning"

    def __init__(self, steps: int = 200, max_ratio: float = 0.95):
        self.steps, self.max_ratio = steps, max_ratio

    def prune(self, model, budget, seed, ctx) -> Pruned:
        import warnings

        import torch_pruning as tp

        from dwrprune.pruning.surgery import output_layer

        spec = copy.deepcopy(model.dwrprune_spec)
        res, in_ch = spec["input"]["resolution"], spec["model"]["in_channels"]
        m = copy.deepcopy(model).eval()
        x = torch.zeros(1, in_ch, res, res)
        limit = budget * count_macs(m, res, in_ch)
        classifier = m.get_submodule(output_layer(m, x))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruner = tp.pruner.MetaPruner(
                m, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                global_pruning=True, pruning_ratio=self.max_ratio,
                iterative_steps=self.steps, ignored_layers=[classifier])
            for _ in range(self.steps):
                pruner.step()
                if count_macs(m, res, in_ch) <= limit:
                    break
            else:
                raise Infeasible
        from dwrprune.models import create_model

        fresh = create_model(spec["model"]["name"], num_classes=spec["model"]["num_classes"],
                             in_channels=in_ch)
        spec["arch"] = {"method": "torch-pruning", "removed_blocks": [],
                        "layers": record_layer_changes(fresh, m)}
        recalibrate_batchnorm(m, ctx.recal(res), ctx.recal_batches)
        m.dwrprune_spec = spec
        return Pruned(m.eval(), spec, f"{pruner.current_step} steps")


class AutoBotMethod:
    """AutoBot's learned per-layer width allocation to the MACs budget."""

    name = "autobot"

    def __init__(self, steps: int = 200):
        self.steps = steps

    def prune(self, model, budget, seed, ctx) -> Pruned:
        from dwrprune.pruning.autobot import AutoBotConfig, autobot_prune

        res = model.dwrprune_spec["input"]["resolution"]
        loader = ctx.data.loader("train", res, shuffle=True, seed=seed)
        out = autobot_prune(model, loader, budget,
                            AutoBotConfig(steps=min(self.steps, 10 * len(loader)), seed=seed),
                            progress=False, recal_loader=ctx.recal(res),
                            recal_batches=ctx.recal_batches)
        return Pruned(out.model, out.spec, f"{len(out.spec['arch']['kept_per_group'])} groups")


METHODS: dict[str, Method] = {
    "3d": ThreeD(), "width-only": OneAxis("w"), "depth-only": OneAxis("d"),
    "resolution-only": OneAxis("r"), "torch-pruning": TorchPruningGlobal(),
    "autobot": AutoBotMethod(),
}


DROP_METHODS: dict[str, Method] = {"3d-drop": WithinDrop("dwr"),
                                   "width-only-drop": WithinDrop("w")}


def latency_methods(names: list[str]) -> dict[str, Method]:
    """The methods of a comparison at equal measured latency: ``3d-latency`` chooses under
    the latency budget itself; every other method (``3d`` included: its MACs-budget choice)
    is pruned to the largest model that measures within it."""
    return {n: ThreeDLatency() if n == "3d-latency" else UnderLatency(METHODS[n])
            for n in names}
