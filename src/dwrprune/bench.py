"""Side-by-side comparison at equal MACs: three-dimensional pruning against one-dimensional
pruning and Torch-Pruning, over budgets and seeds, with one fine-tune recipe for all.

Each method is a small object that turns (original model, budget) into a pruned model at or
just under the budget (exact MACs), or says it is infeasible.  Every (method, budget, seed)
is pruned, evaluated on the test set, fine-tuned with the same recipe, evaluated again and
timed; its row is appended to a CSV as soon as it is done, so a stopped benchmark resumes.
"""

from __future__ import annotations

import copy
import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from .checkpoint import save_model
from .cost import count_macs, count_params, machine_stamp, measure_latency
from .engine import TrainConfig, evaluate, recalibrate_batchnorm, train
from .errors import DwrpruneError
from .pipeline import DataSource, PipelineConfig, Run, collect, fit_samples, solve_budget
from .shrink import Shrinker
from .surgery import record_layer_changes


class Infeasible(Exception):
    """The method cannot reach the budget (e.g. depth alone, with every block removed)."""


@dataclass
class Pruned:
    model: nn.Module
    spec: dict
    note: str = ""
    collection_seconds: float = 0.0  # compute spent on samples (summed from the store)
    collection_wall_seconds: float = 0.0  # of which spent in this call (0 when resumed)


class Method(Protocol):
    name: str

    def prune(self, model: nn.Module, budget: float, seed: int, ctx: BenchContext) -> Pruned: ...


@dataclass
class BenchContext:
    data: DataSource
    out: Path
    pipeline: PipelineConfig
    recal_batches: int = 20

    def shrinker(self, model: nn.Module) -> Shrinker:
        return Shrinker(model, transitions=self.pipeline.transitions,
                        depth_criterion="weight_norm",
                        channel_criterion=self.pipeline.channel_criterion)

    def recal(self, res: int):
        return self.data.loader("train", res, shuffle=True)


def _largest_under(values: list[float], fits) -> float:
    """The largest value (values ascending) for which ``fits`` holds; bisection."""
    lo, hi = 0, len(values) - 1
    if not fits(values[lo]):
        raise Infeasible
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(values[mid]):
            lo = mid
        else:
            hi = mid - 1
    return values[lo]


class OneAxis:
    """Prune one axis only, to the largest realisable setting under the budget."""

    def __init__(self, axis: str):
        self.axis = axis
        self.name = {"d": "depth-only", "w": "width-only", "r": "resolution-only"}[axis]

    def prune(self, model, budget, seed, ctx) -> Pruned:
        shr = ctx.shrinker(model)
        limit = budget * shr.macs(1, 1, 1)
        if self.axis == "d":
            n = len(shr.blocks)
            if n == 0:
                raise Infeasible
            val = _largest_under([k / n for k in range(0, n + 1) if k / n > 0] or [1.0],
                                 lambda d: shr.macs(d, 1, 1) <= limit)
            point = (val, 1.0, 1.0)
        elif self.axis == "r":
            base = shr.base_resolution
            pxs = list(range(shr.min_resolution, base + 1))
            val = _largest_under([p / base for p in pxs], lambda r: shr.macs(1, 1, r) <= limit)
            point = (1.0, 1.0, val)
        else:
            ws = [i / 1000 for i in range(1, 1001)]
            val = _largest_under(ws, lambda w: shr.macs(1, w, 1) <= limit)
            point = (1.0, val, 1.0)
        if shr.macs(*point) > limit:  # d: even zero kept blocks may not fit
            raise Infeasible
        out = shr.shrink(*point, recalibrate=ctx.recal, recal_batches=ctx.recal_batches)
        return Pruned(out.model, out.spec, f"{self.axis}={val:.3f}")


class ThreeD:
    """The full pipeline: collection (once per seed, shared by budgets), MAP, solver."""

    name = "3d"

    def prune(self, model, budget, seed, ctx) -> Pruned:
        cfg = copy.deepcopy(ctx.pipeline)
        cfg.seed = seed
        run = ctx.out / "3d" / f"seed{seed}"
        t0 = time.perf_counter()
        store = collect(model, ctx.data, cfg, run, progress=False)
        wall = time.perf_counter() - t0
        collection = sum(s.seconds for s in store.samples())
        pred, _ = fit_samples(store, cfg)
        shr = Run(run).shrinker(model, cfg, ctx.data)  # the block ranking saved at collection
        sol = solve_budget(pred, shr, budget, cfg.lower_bounds)
        b = sol.best
        out = shr.shrink(b.d, b.w, b.r, recalibrate=ctx.recal, recal_batches=ctx.recal_batches)
        return Pruned(out.model, out.spec, f"d={b.d:.3f} w={b.w:.3f} r={b.r:.3f}", collection,
                      wall)


class TorchPruningGlobal:
    """Torch-Pruning's recommended recipe for a MACs target: MetaPruner with global
    group-magnitude (L2) importance, stepped iteratively until MACs fall under the target."""

    name = "torch-pruning"

    def __init__(self, steps: int = 200, max_ratio: float = 0.95):
        self.steps, self.max_ratio = steps, max_ratio

    def prune(self, model, budget, seed, ctx) -> Pruned:
        import warnings

        import torch_pruning as tp

        from .surgery import output_layer

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
        from .models import create_model

        fresh = create_model(spec["model"]["name"], num_classes=spec["model"]["num_classes"],
                             in_channels=in_ch)
        spec["arch"] = {"method": "torch-pruning", "removed_blocks": [],
                        "layers": record_layer_changes(fresh, m)}
        recalibrate_batchnorm(m, ctx.recal(res), ctx.recal_batches)
        return Pruned(m.eval(), spec, f"{pruner.current_step} steps")


class AutoBotMethod:
    """AutoBot's learned per-layer width allocation to the MACs budget."""

    name = "autobot"

    def __init__(self, steps: int = 200):
        self.steps = steps

    def prune(self, model, budget, seed, ctx) -> Pruned:
        from .autobot import AutoBotConfig, autobot_prune

        res = model.dwrprune_spec["input"]["resolution"]
        loader = ctx.data.loader("train", res, shuffle=True, seed=seed)
        out = autobot_prune(model, loader, budget,
                            AutoBotConfig(steps=min(self.steps, 10 * len(loader)), seed=seed),
                            progress=False)
        return Pruned(out.model, out.spec, f"{len(out.spec['arch']['kept_per_group'])} groups")


METHODS: dict[str, Method] = {
    "3d": ThreeD(), "width-only": OneAxis("w"), "depth-only": OneAxis("d"),
    "resolution-only": OneAxis("r"), "torch-pruning": TorchPruningGlobal(),
    "autobot": AutoBotMethod(),
}

FIELDS = ["method", "budget", "seed", "status", "note", "macs", "macs_ratio", "params",
          "resolution", "test_acc_pruned", "test_acc", "val_acc", "latency_b1_ms",
          "latency_b64_ms", "prune_seconds", "finetune_seconds", "collection_seconds",
          "original_macs", "original_test_acc", "original_latency_b1_ms",
          "original_latency_b64_ms", "torch", "cpu", "threads", "timestamp"]


def _bind_settings(out: Path, model: nn.Module, recipe: TrainConfig,
                   pipeline: PipelineConfig, finetune_subset: int | None) -> None:
    """Rows of one CSV must share a recipe: store it, and refuse to resume with another.
    (Methods, budgets and seeds may be added later; they are columns of the rows.)"""
    import json
    from dataclasses import asdict

    from .pipeline import model_fingerprint

    settings = {"recipe": asdict(recipe) | {"seed": None}, "finetune_subset": finetune_subset,
                "pipeline": pipeline.collect_config() | {"seed": None},
                "model": model_fingerprint(model)}
    path = out / "bench_settings.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != json.loads(json.dumps(settings)):
            diff = sorted(k for k in settings if json.loads(json.dumps(settings[k])) != old.get(k))
            raise DwrpruneError(f"{out} holds results made with other settings (differs in: "
                                f"{', '.join(diff)}); use another --out folder")
    else:
        path.write_text(json.dumps(settings, indent=2) + "\n")


def done_keys(csv_path: Path) -> set[tuple[str, float, int]]:
    if not csv_path.exists():
        return set()
    with open(csv_path, newline="") as f:
        return {(r["method"], float(r["budget"]), int(r["seed"])) for r in csv.DictReader(f)}


def append_row(csv_path: Path, row: dict) -> None:
    new = not csv_path.exists()
    with open(csv_path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        w.writerow({k: row.get(k, "") for k in FIELDS})
        f.flush()


def run_benchmark(model: nn.Module, data: DataSource, methods: list[str],
                  budgets: list[float], seeds: list[int], recipe: TrainConfig,
                  pipeline: PipelineConfig, out: str | Path, finetune_subset: int | None = None,
                  latency_repeats: int = 20, progress: bool = True) -> Path:
    """Run every (method, budget, seed) not yet in ``out/results.csv``; returns the CSV."""
    for m in methods:
        if m not in METHODS:
            raise DwrpruneError(f"unknown method {m!r}; available: {', '.join(METHODS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _bind_settings(out, model, recipe, pipeline, finetune_subset)
    csv_path = out / "results.csv"
    done = done_keys(csv_path)
    spec = model.dwrprune_spec
    base_res, in_ch = spec["input"]["resolution"], spec["model"]["in_channels"]
    stamp = machine_stamp()
    orig = {"original_macs": count_macs(model, base_res, in_ch),
            "original_test_acc": evaluate(model, data.loader("test", base_res)).accuracy,
            "original_latency_b1_ms": measure_latency(model, base_res, 1,
                                                      repeats=latency_repeats).median_ms,
            "original_latency_b64_ms": measure_latency(model, base_res, 64,
                                                       repeats=latency_repeats).median_ms}
    ctx = BenchContext(data, out, pipeline)
    for budget in budgets:
        for seed in seeds:
            for name in methods:
                if (name, float(budget), int(seed)) in done:
                    continue
                row = {"method": name, "budget": budget, "seed": seed, **orig, **stamp,
                       "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S")}
                t0 = time.perf_counter()
                torch.manual_seed(seed)
                try:
                    pruned = METHODS[name].prune(model, budget, seed, ctx)
                except Infeasible:
                    append_row(csv_path, {**row, "status": "infeasible"})
                    continue
                row["prune_seconds"] = (time.perf_counter() - t0
                                        - pruned.collection_wall_seconds)
                row["collection_seconds"] = pruned.collection_seconds
                m, res = pruned.model, pruned.spec["input"]["resolution"]
                row.update(note=pruned.note, resolution=res, macs=count_macs(m, res, in_ch),
                           params=count_params(m))
                row["macs_ratio"] = row["macs"] / orig["original_macs"]
                row["test_acc_pruned"] = evaluate(m, data.loader("test", res)).accuracy
                cfg = copy.deepcopy(recipe)
                cfg.seed = seed
                t1 = time.perf_counter()
                train(m, data.loader("train", res, shuffle=True, subset=finetune_subset,
                                     seed=seed), cfg, progress=progress, log=False,
                      desc=f"{name} {budget:g} s{seed}")
                row["finetune_seconds"] = time.perf_counter() - t1
                m.eval()
                row["val_acc"] = evaluate(m, data.loader("val", res)).accuracy
                row["test_acc"] = evaluate(m, data.loader("test", res)).accuracy
                row["latency_b1_ms"] = measure_latency(m, res, 1,
                                                       repeats=latency_repeats).median_ms
                row["latency_b64_ms"] = measure_latency(m, res, 64,
                                                        repeats=latency_repeats).median_ms
                save_model(out / "models" / f"{name}_b{budget:g}_s{seed}.pt", m, pruned.spec,
                           {k: row[k] for k in ("macs", "test_acc", "val_acc")})
                append_row(csv_path, {**row, "status": "ok"})
    return csv_path


def summarise(csv_path: str | Path) -> list[dict]:
    """Mean and standard deviation over seeds for each (method, budget)."""
    groups: dict[tuple[str, float], list[dict]] = {}
    with open(csv_path, newline="") as f:
        for r in csv.DictReader(f):
            groups.setdefault((r["method"], float(r["budget"])), []).append(r)

    def stat(rows, key):
        vals = [float(r[key]) for r in rows if r["status"] == "ok" and r[key] != ""]
        if not vals:
            return None, None
        mean = sum(vals) / len(vals)
        if len(vals) < 2:
            return mean, 0.0
        return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))

    out = []
    for (method, budget), rows in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        s = {"method": method, "budget": budget, "seeds": len(rows),
             "status": "ok" if any(r["status"] == "ok" for r in rows) else rows[0]["status"]}
        for key in ("test_acc", "test_acc_pruned", "macs_ratio", "params", "latency_b1_ms",
                    "latency_b64_ms", "prune_seconds", "finetune_seconds", "collection_seconds",
                    "original_test_acc", "original_latency_b1_ms", "original_latency_b64_ms"):
            s[key], s[key + "_std"] = stat(rows, key)
        out.append(s)
    return out
