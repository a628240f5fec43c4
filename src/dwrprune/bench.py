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
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import save_model
from .cost import count_macs, count_params, machine_stamp, measure_latency
from .engine import TrainConfig, evaluate, recalibrate_batchnorm, train
from .errors import DwrpruneError
from .executors import (
    Executor,
    LocalExecutor,
    Node,
    PortableModel,
    Resources,
    raise_failures,
    run_graph,
)
from .pipeline import (
    DataSource,
    PipelineConfig,
    Run,
    collect,
    fit_samples,
    ranked_shrinker,
    solve_budget,
)
from .shrink import Shrinker
from .surgery import record_layer_changes


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
    prepared: dict = field(default_factory=dict)  # what Method.prepare computed, per job

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
    """The full pipeline.  :meth:`prepare` runs in the driver: one collection per seed
    (its jobs on the benchmark's executor, shared by all budgets), the MAP fit and the
    solver; :meth:`prune` then only shrinks to the chosen point, wherever it runs."""

    name = "3d"

    def prepare(self, model, todo: list[tuple[float, int]], ctx, executor) -> None:
        for seed in sorted({s for _, s in todo}):
            cfg = copy.deepcopy(ctx.pipeline)
            cfg.seed = seed
            run = Run(ctx.out / "3d" / f"seed{seed}")
            store = collect(model, ctx.data, cfg, run.path, progress=ctx.progress,
                            executor=executor, wait_for_lock=True)  # shared by processes
            collection = sum(s.seconds for s in store.samples())
            pred, _ = fit_samples(store, cfg)
            shr = run.shrinker(model, cfg)  # cost queries, with the saved block ranking
            order = run.block_order()
            for budget in sorted({b for b, s in todo if s == seed}):
                t0 = time.perf_counter()
                sol = solve_budget(pred, shr, budget, cfg.lower_bounds)
                ctx.prepared[(self.name, budget, seed)] = {
                    "point": (sol.best.d, sol.best.w, sol.best.r),
                    "block_order": order, "collection_seconds": collection,
                    "solve_seconds": time.perf_counter() - t0}

    def prune(self, model, budget, seed, ctx) -> Pruned:
        p = ctx.prepared[(self.name, budget, seed)]
        cfg = copy.deepcopy(ctx.pipeline)
        cfg.seed = seed
        shr = ranked_shrinker(model, cfg, p["block_order"], ctx.data)
        d, w, r = p["point"]
        out = shr.shrink(d, w, r, recalibrate=ctx.recal, recal_batches=ctx.recal_batches)
        return Pruned(out.model, out.spec, f"d={d:.3f} w={w:.3f} r={r:.3f}",
                      p["collection_seconds"], p["solve_seconds"])


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
        m.dwrprune_spec = spec
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
                            progress=False, recal_loader=ctx.recal(res),
                            recal_batches=ctx.recal_batches)
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
        return {_key(r) for r in csv.DictReader(f)}


def append_row(csv_path: Path, row: dict) -> None:
    new = not csv_path.exists()
    with open(csv_path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        w.writerow({k: row.get(k, "") for k in FIELDS})
        f.flush()


class BenchJob:
    """One (method, budget, seed): prune, test, fine-tune with the shared recipe, test
    again.  Runs wherever the executor puts it; returns the row and the fine-tuned model."""

    def __init__(self, model: nn.Module, ctx: BenchContext, recipe: TrainConfig,
                 finetune_subset: int | None, original: dict):
        self.original, self.ctx, self.recipe = PortableModel(model), ctx, recipe
        self.finetune_subset, self.orig = finetune_subset, original

    def __call__(self, name: str, budget: float, seed: int) -> tuple[dict, PortableModel | None]:
        model, data = self.original.model, self.ctx.data
        in_ch = model.dwrprune_spec["model"]["in_channels"]
        row = {"method": name, "budget": budget, "seed": seed, **self.orig, **machine_stamp(),
               "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S")}
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        try:
            pruned = METHODS[name].prune(model, budget, seed, self.ctx)
        except Infeasible:
            return {**row, "status": "infeasible"}, None
        row["prune_seconds"] = time.perf_counter() - t0 + pruned.prepare_seconds
        row["collection_seconds"] = pruned.collection_seconds
        m, res = pruned.model, pruned.spec["input"]["resolution"]
        row.update(note=pruned.note, resolution=res, macs=count_macs(m, res, in_ch),
                   params=count_params(m))
        row["macs_ratio"] = row["macs"] / self.orig["original_macs"]
        row["test_acc_pruned"] = evaluate(m, data.loader("test", res)).accuracy
        cfg = copy.deepcopy(self.recipe)
        cfg.seed = seed
        t1 = time.perf_counter()
        train(m, data.loader("train", res, shuffle=True, subset=self.finetune_subset,
                             seed=seed), cfg, progress=self.ctx.progress, log=False,
              desc=f"{name} {budget:g} s{seed}")
        row["finetune_seconds"] = time.perf_counter() - t1
        m.eval()
        row["val_acc"] = evaluate(m, data.loader("val", res)).accuracy
        row["test_acc"] = evaluate(m, data.loader("test", res)).accuracy
        return {**row, "status": "ok"}, PortableModel(m)


def model_path(out: Path, method: str, budget: float, seed: int) -> Path:
    return out / "models" / f"{method}_b{budget:g}_s{seed}.pt"


def run_benchmark(model: nn.Module, data: DataSource, methods: list[str],
                  budgets: list[float], seeds: list[int], recipe: TrainConfig,
                  pipeline: PipelineConfig, out: str | Path, finetune_subset: int | None = None,
                  latency_repeats: int = 20, progress: bool = True,
                  executor: Executor | None = None) -> Path:
    """Run every (method, budget, seed) not yet in ``out/results.csv``; returns the CSV.

    Jobs go to ``executor`` (default: in this process); the driver writes each finished row
    and model as it arrives.  Latency is measured afterwards, in the driver, one model at a
    time (:func:`measure_latencies`), so parallel jobs cannot distort it."""
    for m in methods:
        if m not in METHODS:
            raise DwrpruneError(f"unknown method {m!r}; available: {', '.join(METHODS)}")
    executor = executor or LocalExecutor()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _bind_settings(out, model, recipe, pipeline, finetune_subset)
    csv_path = out / "results.csv"
    done = done_keys(csv_path)
    spec = model.dwrprune_spec
    base_res, in_ch = spec["input"]["resolution"], spec["model"]["in_channels"]
    orig = {"original_macs": count_macs(model, base_res, in_ch),
            "original_test_acc": evaluate(model, data.loader("test", base_res)).accuracy}
    ctx = BenchContext(data, out, pipeline, progress=progress and executor.name == "local")
    todo = [(name, float(b), int(s)) for b in budgets for s in seeds for name in methods
            if (name, float(b), int(s)) not in done]
    for name in dict.fromkeys(n for n, _, _ in todo):
        if hasattr(METHODS[name], "prepare"):
            METHODS[name].prepare(model, [(b, s) for n, b, s in todo if n == name], ctx,
                                  executor)
    job = BenchJob(model, ctx, recipe, finetune_subset, orig)
    bar = tqdm(total=len(todo), desc="benchmark", unit="job", disable=not progress)

    def node(name, budget, seed) -> Node:
        def finished(result):
            row, pruned = result
            if pruned is not None:
                save_model(model_path(out, name, budget, seed), pruned.model,
                           pruned.model.dwrprune_spec,
                           {k: row[k] for k in ("macs", "test_acc", "val_acc")})
            append_row(csv_path, row)
            bar.update(1)

        return Node(f"{name} b{budget:g} s{seed}", lambda: (job, (name, budget, seed)),
                    finished, resources=Resources(pipeline.job_cpus, pipeline.job_gpus))

    failures = run_graph([node(*t) for t in todo], executor,
                         on_failure=lambda f: bar.write(f"[bench] {f.key} FAILED: {f.error}"))
    bar.close()
    measure_latencies(out, model, repeats=latency_repeats)
    raise_failures(failures, "benchmark jobs", str(csv_path))
    return csv_path


def _key(r: dict) -> tuple[str, float, int]:
    return r["method"], float(r["budget"]), int(r["seed"])


def _update_rows(csv_path: Path, updates: dict[tuple[str, float, int], dict]) -> None:
    """Rewrite ``csv_path`` atomically with ``updates`` merged into their rows; re-reads the
    file first, so rows another benchmark process appended meanwhile are kept."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    tmp = csv_path.with_suffix(f".csv.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (updates.get(_key(r)) or r).get(k, "") for k in FIELDS})
    tmp.replace(csv_path)


def measure_latencies(out: str | Path, original: nn.Module, repeats: int = 20,
                      remeasure: bool = False, progress: bool = False,
                      threads: int = 1) -> int:
    """Fill in the latency columns (batch 1 and 64, the unpruned model too) of the rows that
    lack them, or of every row with ``remeasure``: one model at a time, in this process, with
    the same threads, warm-up and repeats, so the figures are comparable with each other.
    Returns the number of rows measured."""
    out = Path(out)
    csv_path = out / "results.csv"
    if not csv_path.exists():
        return 0
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    todo = [r for r in rows if r["status"] == "ok" and (remeasure or r["latency_b1_ms"] == "")]
    if not todo:
        return 0
    spec = original.dwrprune_spec
    base_res = spec["input"]["resolution"]
    stamp = machine_stamp() | {"threads": threads}  # the threads latency is measured with

    def median_ms(model: nn.Module, res: int, batch: int) -> float:
        return measure_latency(model, res, batch, threads=threads, repeats=repeats).median_ms

    base = {"original_latency_b1_ms": median_ms(original, base_res, 1),
            "original_latency_b64_ms": median_ms(original, base_res, 64)}
    from .checkpoint import load

    updates = {}
    for r in tqdm(todo, desc="latency", unit="model", disable=not progress):
        path = model_path(out, *_key(r))
        if not path.exists():
            continue  # a row from another machine whose model file is not here
        m = load(path)
        res = m.dwrprune_spec["input"]["resolution"]
        updates[_key(r)] = {**r, **base, **stamp, "latency_b1_ms": median_ms(m, res, 1),
                            "latency_b64_ms": median_ms(m, res, 64)}
    _update_rows(csv_path, updates)
    return len(updates)


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
