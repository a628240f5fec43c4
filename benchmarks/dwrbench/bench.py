"""Side-by-side comparison at equal MACs: three-dimensional pruning against one-dimensional
pruning and Torch-Pruning, over budgets and seeds, with one fine-tune recipe for all.

Each method is a small object that turns (original model, budget) into a pruned model at or
just under the budget (exact MACs), or says it is infeasible.  Every (method, budget, seed)
is pruned, evaluated on the test set, fine-tuned with the same recipe, evaluated again and
timed; its row is appended to a CSV as soon as it is done, so a stopped benchmark resumes.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from dwrprune.checkpoint import save_model
from dwrprune.cost import count_macs, count_params, machine_stamp, measure_latencies
from dwrprune.cost.latency import LatencyTarget, Reference, measure_ms
from dwrprune.errors import DwrpruneError
from dwrprune.io.settings import check_same_settings
from dwrprune.pipeline import DataSource, PipelineConfig, model_fingerprint
from dwrprune.pipeline.executors import (
    Executor,
    LocalExecutor,
    Node,
    PortableModel,
    Resources,
    raise_failures,
    run_graph,
)
from dwrprune.training.device_data import DATA_PATH
from dwrprune.training.engine import TrainConfig, evaluate

from .methods import (
    DROP_METHODS,
    METHODS,
    BenchContext,
    Infeasible,
    finetune_and_score,
    latency_methods,
)

FIELDS = ["method", "budget", "seed", "status", "note", "macs", "macs_ratio", "params",
          "resolution", "test_acc_pruned", "test_acc", "val_acc", "latency_b1_ms",
          "latency_b64_ms", "prune_seconds", "finetune_seconds", "collection_seconds",
          "original_macs", "original_test_acc", "original_latency_b1_ms",
          "original_latency_b64_ms", "torch", "cpu", "threads", "timestamp", "budget_kind",
          "latency_budget_ms", "latency_b1_ratio", "latency_b64_ratio", "model_key",
          "data_path"]
REUSED = ("test_acc", "val_acc", "val_loss")  # what an identical model's fine-tune gave


def model_key(model: nn.Module) -> str:
    """Identifies a pruned model as built: base model, input, and the weights by name (the
    blocks and channels kept are their names and shapes), so two methods that keep the same
    counts of different channels differ, but not how it was chosen (the spec's ``arch`` and
    ``provenance`` record the request and criteria: 3d's choice of width-only, ranked by
    loss, is width-only's model).  Two rows with the same key and seed are the same model
    fine-tuned the same way."""
    return model_fingerprint(model, ("model", "input"))[:16]


def _bind_settings(out: Path, model: nn.Module, recipe: TrainConfig,
                   pipeline: PipelineConfig, finetune_subset: int | None,
                   latency_target=None, max_drop: bool = False) -> None:
    """Rows of one CSV must share a recipe: store it, and refuse to resume with another.
    (Methods, budgets and seeds may be added later; they are columns of the rows.)"""
    from dataclasses import asdict

    settings = {"recipe": asdict(recipe) | {"seed": None}, "finetune_subset": finetune_subset,
                "pipeline": pipeline.collect_config() | {"seed": None},
                "model": model_fingerprint(model), "data_path": DATA_PATH}
    if latency_target is not None:
        settings["latency_target"] = latency_target.key()
    if max_drop:  # budgets are allowed accuracy drops
        settings["budgets"] = "max-drop"
    path = out / "bench_settings.json"
    if path.exists():
        check_same_settings(json.loads(path.read_text()), json.loads(json.dumps(settings)),
                            f"benchmark folder {out}", "filled")
    else:
        path.write_text(json.dumps(settings, indent=2) + "\n")


def settings_model(out: str | Path) -> str | None:
    """The fingerprint of the original a benchmark folder was filled from (None: no record)."""
    path = Path(out) / "bench_settings.json"
    return json.loads(path.read_text()).get("model") if path.is_file() else None


def settings_runtime(out: str | Path) -> str:
    """The runtime a latency comparison in ``out`` was made for (its latency columns are
    measured in it): the runtime its latency target names, else PyTorch."""
    path = Path(out) / "bench_settings.json"
    key = json.loads(path.read_text()).get("latency_target") if path.is_file() else None
    return LatencyTarget.from_key(key).runtime if key else "torch"


def bundled_original(out: str | Path) -> str | None:
    """The name of the bundled checkpoint a benchmark folder was filled from, if it was."""
    from dwrprune import pretrained
    from dwrprune.checkpoint import load

    want = settings_model(out)
    if want is None:  # no record: nothing to match, so no checkpoint to load
        return None
    return next((name for name in pretrained.available()
                 if want == model_fingerprint(load(pretrained.path(name)))), None)


def done_keys(csv_path: Path) -> set[tuple[str, float, int]]:
    if not csv_path.exists():
        return set()
    with open(csv_path, newline="") as f:
        return {_key(r) for r in csv.DictReader(f)}


def _ensure_header(csv_path: Path, fields: list[str]) -> None:
    """A CSV written before a column was added gets today's header (rows kept)."""
    if not csv_path.exists():
        return
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames == fields:
            return
        rows = list(reader)
    tmp = csv_path.with_suffix(f".csv.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in fields})
    tmp.replace(csv_path)


def append_row(csv_path: Path, row: dict, fields: list[str] = FIELDS) -> None:
    """Append one row (columns ``fields``), writing the header for a new file."""
    csv_path = Path(csv_path)
    _ensure_header(csv_path, fields)
    new = not csv_path.exists()
    with open(csv_path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        if new:
            w.writeheader()
        w.writerow({k: row.get(k, "") for k in fields})
        f.flush()


class BenchJob:
    """One (method, budget, seed): prune, test, fine-tune with the shared recipe, test
    again.  Runs wherever the executor puts it; returns the row and the fine-tuned model."""

    def __init__(self, model: nn.Module, ctx: BenchContext, recipe: TrainConfig,
                 finetune_subset: int | None, original: dict, methods: dict | None = None):
        self.original, self.ctx, self.recipe = PortableModel(model), ctx, recipe
        self.finetune_subset, self.orig = finetune_subset, original
        self.methods = methods or METHODS
        # (model_key, seed) -> a finished row whose model file exists: the same pruned model
        # with the same seed gets the same fine-tune (common random numbers), so it is reused
        self.finished: dict[tuple[str, int], dict] = {}

    def __call__(self, name: str, budget: float, seed: int) -> tuple[dict, PortableModel | None]:
        model, data = self.original.model, self.ctx.data
        in_ch = model.dwrprune_spec["model"]["in_channels"]
        row = {"method": name, "budget": budget, "seed": seed, **self.orig, **machine_stamp(),
               "data_path": DATA_PATH,
               "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"), "budget_kind": "macs"}
        target = self.ctx.latency_target
        if self.ctx.max_drop:
            row["budget_kind"] = f"drop-{target.key()}"
        elif target is not None:
            row.update(budget_kind=f"latency-{target.key()}",
                       latency_budget_ms=budget * self.ctx.original_latency_ms)
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        try:
            pruned = self.methods[name].prune(model, budget, seed, self.ctx)
        except Infeasible:
            return {**row, "status": "infeasible"}, None
        row["prune_seconds"] = time.perf_counter() - t0 + pruned.prepare_seconds
        row["collection_seconds"] = pruned.collection_seconds
        m, res = pruned.model, pruned.spec["input"]["resolution"]
        row.update(note=pruned.note, resolution=res, macs=count_macs(m, res, in_ch),
                   params=count_params(m))
        row["macs_ratio"] = row["macs"] / self.orig["original_macs"]
        row["test_acc_pruned"] = evaluate(m, data.loader("test", res)).accuracy
        row["model_key"] = model_key(m)
        same = self.finished.get((row["model_key"], seed))
        if same is not None:  # the fine-tune is already done: its figures, not a repeat
            row.update({k: same[k] for k in REUSED if k in same},
                       note=f"{pruned.note}; the same model as {same['method']} "
                            f"b{float(same['budget']):g}: its fine-tune reused")
            return {**row, "status": "ok"}, None
        row.update(finetune_and_score(m, data, res, self.recipe, seed, self.finetune_subset,
                                      self.ctx.progress, f"{name} {budget:g} s{seed}"))
        return {**row, "status": "ok"}, PortableModel(m)


def model_path(out: Path, method: str, budget: float, seed: int) -> Path:
    return out / "models" / f"{method}_b{budget:g}_s{seed}.pt"


def run_benchmark(model: nn.Module, data: DataSource, methods: list[str],
                  budgets: list[float], seeds: list[int], recipe: TrainConfig,
                  pipeline: PipelineConfig, out: str | Path, finetune_subset: int | None = None,
                  latency_repeats: int = 20, progress: bool = True,
                  executor: Executor | None = None, latency_target=None,
                  max_drop: bool = False, collection_seed: int | None = None) -> Path:
    """Run every (method, budget, seed) not yet in ``out/results.csv``; returns the CSV.

    Jobs go to ``executor`` (default: in this process); the driver writes each finished row
    and model as it arrives.  Latency is measured afterwards, in the driver, one model at a
    time (:func:`time_result_models`), so parallel jobs cannot distort it.

    With ``latency_target`` (a :class:`~dwrprune.cost.latency.LatencyTarget`), ``budgets`` are
    fractions of the original model's measured latency there: ``3d-latency`` chooses under
    the latency budget, every other method is pruned to the largest model that measures
    within it (:func:`~dwrbench.methods.latency_methods`); use its own ``out``.  With
    ``max_drop`` too, ``budgets`` are the largest allowed accuracy drops (points) and the
    methods are :data:`~dwrbench.methods.DROP_METHODS`: the fastest model on the target
    within each drop.  With ``collection_seed``, the 3d methods plan every seed from that
    seed's collection (``out/3d/seed<N>``): the rows' seeds then vary the pruning's
    re-calibration and the fine-tune, not the collection, and the rows' notes say so."""
    if max_drop and latency_target is None:
        raise DwrpruneError("a comparison within an accuracy drop needs a latency target")
    if max_drop:
        table = DROP_METHODS
    elif latency_target is not None:
        table = latency_methods(list(METHODS) + ["3d-latency"])
    else:
        table = METHODS
    for m in methods:
        if m not in table:
            raise DwrpruneError(f"unknown method {m!r}; available: {', '.join(table)}")
    executor = executor or LocalExecutor()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _bind_settings(out, model, recipe, pipeline, finetune_subset, latency_target, max_drop)
    csv_path = out / "results.csv"
    done = done_keys(csv_path)
    spec = model.dwrprune_spec
    base_res, in_ch = spec["input"]["resolution"], spec["model"]["in_channels"]
    orig = {"original_macs": count_macs(model, base_res, in_ch),
            "original_test_acc": evaluate(model, data.loader("test", base_res)).accuracy}
    ctx = BenchContext(data, out, pipeline, progress=progress and executor.name == "local",
                       max_drop=max_drop, collection_seed=collection_seed)
    if latency_target is not None:
        ctx.latency_target = latency_target.check()
        ctx.latency_reference = Reference(
            model, base_res, measure_ms(model, base_res, latency_target)["median_ms"])
    todo = [(name, float(b), int(s)) for b in budgets for s in seeds for name in methods
            if (name, float(b), int(s)) not in done]
    for name in dict.fromkeys(n for n, _, _ in todo):
        if hasattr(table[name], "prepare"):
            table[name].prepare(model, [(b, s) for n, b, s in todo if n == name], ctx,
                                executor)
    job = BenchJob(model, ctx, recipe, finetune_subset, orig, table)
    job.finished = reusable_rows(out)
    bar = tqdm(total=len(todo), desc="benchmark", unit="job", disable=not progress)

    def node(name, budget, seed) -> Node:
        def finished(result):
            row, pruned = result
            path = model_path(out, name, budget, seed)
            if pruned is not None:
                save_model(path, pruned.model, pruned.model.dwrprune_spec,
                           {k: row[k] for k in ("macs", "test_acc", "val_acc")})
            elif row["status"] == "ok":  # reused: the identical fine-tuned model's file
                same = job.finished[(row["model_key"], seed)]
                shutil.copyfile(model_path(out, *_key(same)), path)
            append_row(csv_path, row)
            if row["status"] == "ok":
                job.finished.setdefault((row["model_key"], seed), row)
            bar.update(1)

        return Node(f"{name} b{budget:g} s{seed}", lambda: (job, (name, budget, seed)),
                    finished, resources=Resources(pipeline.job_cpus, pipeline.job_gpus))

    failures = run_graph([node(*t) for t in todo], executor,
                         on_failure=lambda f: bar.write(f"[bench] {f.key} FAILED: {f.error}"))
    bar.close()
    time_result_models(out, model, repeats=latency_repeats)
    raise_failures(failures, "benchmark jobs", str(csv_path))
    return csv_path


def reusable_rows(out: Path) -> dict[tuple[str, int], dict]:
    """The finished rows of ``out`` whose fine-tuned model file is here, by (model_key,
    seed): what :class:`BenchJob` reuses instead of fine-tuning the same model again."""
    csv_path = out / "results.csv"
    if not csv_path.exists():
        return {}
    with open(csv_path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "ok" and r.get("model_key")
                and r.get("test_acc") and model_path(out, *_key(r)).exists()]
    return {(r["model_key"], int(r["seed"])): r for r in reversed(rows)}  # the first wins


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


def time_result_models(out: str | Path, original: nn.Module, repeats: int = 20,
                      remeasure: bool = False, progress: bool = False,
                      threads: int = 1) -> int:
    """Fill in the latency columns (batch 1 and 64, the unpruned model too) of the rows that
    lack them, or of every row with ``remeasure``: one model at a time, in this process, with
    the same threads, warm-up and repeats, each timed round-robin beside the unpruned model
    (``latency_bN_ratio``: the model's time over the original's, taken together; the ms
    columns scaled to the original's time at the start of the pass), so the figures are
    comparable with each other however the machine's speed drifts during the pass.
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
    filled_from = settings_model(out)
    if filled_from is not None and filled_from != model_fingerprint(original):
        raise DwrpruneError(f"benchmark folder {out} was filled from another model than the "
                            "one given: its speed-ups would be against the wrong original; "
                            "give the checkpoint its rows were pruned from")
    spec = original.dwrprune_spec
    base_res = spec["input"]["resolution"]
    stamp = machine_stamp() | {"threads": threads}  # the threads latency is measured with
    runtime = settings_runtime(out)  # an ONNX Runtime comparison is timed in onnxruntime

    def median_ms(model: nn.Module, res: int, batch: int) -> float:
        return measure_latencies([(model, res)], batch, threads=threads, repeats=repeats,
                                 runtime=runtime)[0].median_ms

    base = {"original_latency_b1_ms": median_ms(original, base_res, 1),
            "original_latency_b64_ms": median_ms(original, base_res, 64)}
    refs = {b: Reference(original, base_res, base[f"original_latency_b{b}_ms"]) for b in (1, 64)}
    from dwrprune.checkpoint import load

    updates = {}
    for r in tqdm(todo, desc="latency", unit="model", disable=not progress):
        path = model_path(out, *_key(r))
        if not path.exists():
            continue  # a row from another machine whose model file is not here
        m = load(path)
        res = m.dwrprune_spec["input"]["resolution"]
        row = {**r, **base, **stamp}
        for b in (1, 64):  # timed round-robin beside the original: drift cancels
            ms = measure_ms(m, res, LatencyTarget("cpu", b, threads, runtime), repeats,
                            reference=refs[b])
            row[f"latency_b{b}_ms"], row[f"latency_b{b}_ratio"] = ms["median_ms"], ms["ratio"]
        updates[_key(r)] = row
    _update_rows(csv_path, updates)
    return len(updates)


def summarise(csv_path: str | Path) -> list[dict]:
    """Mean and standard deviation over seeds for each (method, budget)."""
    groups: dict[tuple[str, float], list[dict]] = {}
    with open(csv_path, newline="") as f:
        for r in csv.DictReader(f):
            groups.setdefault((r["method"], float(r["budget"])), []).append(r)

    def stat(rows, key):
        vals = [float(r[key]) for r in rows if r["status"] == "ok" and r.get(key, "") != ""]
        if not vals:
            return None, None
        mean = sum(vals) / len(vals)
        if len(vals) < 2:
            return mean, 0.0
        return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))

    out = []
    for (method, budget), rows in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        s = {"method": method, "budget": budget, "seeds": len(rows),
             "ok_seeds": sum(r["status"] == "ok" for r in rows),
             "budget_kind": rows[0].get("budget_kind") or "macs",
             "status": "ok" if any(r["status"] == "ok" for r in rows) else rows[0]["status"]}
        for key in ("test_acc", "test_acc_pruned", "macs_ratio", "params", "latency_b1_ms",
                    "latency_b64_ms", "prune_seconds", "finetune_seconds", "collection_seconds",
                    "original_test_acc", "original_latency_b1_ms", "original_latency_b64_ms",
                    "latency_budget_ms", "latency_b1_ratio", "latency_b64_ratio"):
            s[key], s[key + "_std"] = stat(rows, key)
        out.append(s)
    return out
