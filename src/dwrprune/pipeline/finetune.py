"""Stage 4: prune the original model to the chosen point, fine-tune it, test it once.

``final/`` is bound to the chosen point and the final-stage options (:meth:`Run.prepare_final`):
a re-run with another budget or recipe starts this stage afresh, keeping the collection, and
a resumed fine-tune only ever continues the checkpoint of the same plan.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import asdict

from torch import nn
from tqdm.auto import tqdm

from ..checkpoint import save_model
from ..cost import cost_reports_side_by_side
from ..io.spec import ModelSpec
from ..pruning.shrink import Shrinker
from ..search.solver import Solution
from ..training import distributed
from ..training.engine import TrainConfig, evaluate, train
from .config import PipelineConfig
from .data import DataSource
from .run import Run


def channel_table(original: nn.Module, pruned: nn.Module) -> list[dict]:
    """Every convolution and linear layer of ``original`` with its output channels before
    and after pruning (``after`` None: the layer went with a removed block)."""
    kept = dict(pruned.named_modules())
    rows = []
    for name, m in original.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            p = kept.get(name)
            out = "out_channels" if isinstance(m, nn.Conv2d) else "out_features"
            rows.append({"layer": name, "before": getattr(m, out),
                         "after": getattr(p, out) if p is not None else None})
    return rows


def result_line(result: dict) -> str:
    """The final stage in one line: test accuracy before and after, MACs kept."""
    return (f"test accuracy {100 * result['original_test_acc']:.2f}% -> "
            f"{100 * result['test_acc']:.2f}% "
            f"({100 * (result['test_acc'] - result['original_test_acc']):+.2f} points) at "
            f"{100 * result['macs_ratio']:.1f}% of the MACs")


def final_recipe(cfg: PipelineConfig) -> TrainConfig:
    """The final fine-tune's recipe."""
    return TrainConfig(epochs=cfg.final_epochs, lr=cfg.final_lr, seed=cfg.seed,
                       kd_alpha=cfg.distill, label_smoothing=cfg.label_smoothing,
                       precision=cfg.precision, channels_last=cfg.channels_last)


def finetune_point(model: nn.Module, data: DataSource, cfg: PipelineConfig,
                   shrinker: Shrinker, point, checkpoint_dir, progress: bool = True,
                   train_fn: Callable | None = None):
    """Prune ``model`` to ``point`` (BatchNorm re-calibrated) and fine-tune it with the final
    recipe (resumable from ``checkpoint_dir``).  Returns the fine-tuned model, its spec,
    the validation figures before fine-tuning, the history."""
    out = shrinker.shrink(*point, recalibrate=lambda res: data.loader(
        "train", res, shuffle=True, seed=cfg.seed), recal_batches=max(cfg.recal_batches, 20))
    pruned, spec = out.model, out.spec
    res = spec["input"]["resolution"]
    val = data.loader("val", res)
    before = evaluate(pruned, val, progress=progress, desc="val (pruned)")
    tcfg = final_recipe(cfg)
    loader = data.loader("train", res, shuffle=True, subset=cfg.final_subset, seed=cfg.seed)
    teacher = copy.deepcopy(model).eval() if cfg.distill > 0 else None
    if train_fn is not None:
        train_fn(pruned, loader, tcfg, teacher)
        history = []
    else:
        history = train(pruned, loader, tcfg, val_loader=val, teacher=teacher,
                        checkpoint_dir=checkpoint_dir, spec=spec, progress=progress).history
    pruned.eval()
    return pruned, spec, before, history


def finetune_final(model: nn.Module, data: DataSource, cfg: PipelineConfig, shrinker: Shrinker,
                   solution: Solution, run_dir, progress: bool = True,
                   train_fn: Callable | None = None) -> dict:
    """Prune ``model`` to ``solution.best``, fine-tune, evaluate on test once; writes
    ``final/model.pt`` and ``final.json`` and returns the figures.  The run folder stays
    locked for the whole stage: another process cannot re-plan or restart it meanwhile."""
    run = Run(run_dir)
    with run.lock() if distributed.is_main() else contextlib.nullcontext():
        return _finetune_final(model, data, cfg, shrinker, solution, run, progress, train_fn)


def _finetune_final(model, data, cfg, shrinker, solution, run, progress, train_fn) -> dict:
    progress = progress and distributed.is_main()
    if distributed.is_main():
        with run.lock():
            stale = run.prepare_final(run.final_settings(cfg, solution))
        if stale:
            tqdm.write(f"[final] settings changed ({stale}): the final stage starts afresh "
                       "(the collection is kept)")
    distributed.barrier()
    b = solution.best
    if distributed.is_main():
        rounded = f" (channels rounded to {b.round_to}s)" if b.round_to else ""
        tqdm.write(f"[final] pruning to d={b.d:.3f} w={b.w:.3f} r={b.r:.3f}{rounded} and "
                   "fine-tuning "
                   f"{cfg.final_epochs} epoch{'s' if cfg.final_epochs != 1 else ''} on "
                   f"{cfg.final_subset or 'all the'} training images")
    pruned, spec, before, history = finetune_point(
        model, data, cfg, shrinker.rounded(b.round_to), (b.d, b.w, b.r), run.final_dir,
        progress, train_fn)
    res = spec["input"]["resolution"]
    val = data.loader("val", res)
    tcfg = final_recipe(cfg)
    spec["provenance"] = {**spec.get("provenance", {}),
                          "finetune": {"epochs": cfg.final_epochs, "lr": cfg.final_lr,
                                       "distill": cfg.distill,
                                       "label_smoothing": cfg.label_smoothing,
                                       "subset": cfg.final_subset, "seed": cfg.seed,
                                       "custom_train_fn": train_fn is not None},
                          "budget": solution.budget, "predicted_val_acc": b.predicted}
    pruned.dwrprune_spec = spec
    after = evaluate(pruned, val, progress=progress, desc="val (fine-tuned)")
    test = evaluate(pruned, data.loader("test", res), progress=progress, desc="test")
    base_res = shrinker.base_resolution
    base_test = evaluate(model, data.loader("test", base_res), progress=progress,
                         desc="test (original)")
    if not distributed.is_main():  # under torchrun: rank 0 measures and writes
        return {"val_acc": after.accuracy, "test_acc": test.accuracy}
    orig_cost, new_cost = cost_reports_side_by_side([(model, base_res), (pruned, res)])
    result = {
        "point": {"d": b.d, "w": b.w, "r": b.r, "kept_blocks": b.kept_blocks,
                  "resolution": res, "round_to": b.round_to},
        "predicted_val_acc": b.predicted, "val_acc_before_finetune": before.accuracy,
        "val_acc": after.accuracy, "test_acc": test.accuracy,
        "original_test_acc": base_test.accuracy,
        "macs": new_cost.macs, "original_macs": orig_cost.macs,
        "macs_ratio": new_cost.macs / orig_cost.macs,
        "params": new_cost.params, "original_params": orig_cost.params,
        "latency_ms": {str(x.batch_size): x.median_ms for x in new_cost.latency},
        "original_latency_ms": {str(x.batch_size): x.median_ms for x in orig_cost.latency},
        "removed_blocks": [x["name"] for x in spec["arch"]["removed_blocks"]],
        "channels": channel_table(model, pruned),
        "contract": ModelSpec.from_dict(spec).contract_line(),
        "history": history, "finetune": asdict(tcfg),
    }
    target = cfg.latency_target
    if target is not None:  # one latency figure for the target, measured beside the original
        from ..cost.latency import Reference, latency_verdict, measure_ms, speed_line

        lat = run.plan().get("latency") or {}
        ref = Reference(model, base_res, lat["original_ms"])
        if lat.get("budget_ms") is not None:  # a latency budget: the verdict
            v = latency_verdict(pruned, res, target, ref, lat["budget_ms"],
                                by_ratio=not cfg.latency_ms)
        else:  # the fastest within a drop: how fast it is
            v = {"target": target.key(), "original_ms": lat["original_ms"],
                 **measure_ms(pruned, res, target, reference=ref)}
            v["line"] = speed_line(v)
        result["latency"] = v
        b = str(target.batch)
        if target.runtime == "torch" and target.device == "cpu" and target.threads == 1 and \
                b in result["latency_ms"]:  # the cost table's column: one figure, not two
            result["original_latency_ms"][b] = v["original_ms"]
            result["latency_ms"][b] = v["median_ms"]
    if cfg.max_drop is not None:  # the drop allowed, predicted and measured
        orig_val = evaluate(model, data.loader("val", base_res), progress=progress,
                            desc="val (original)").accuracy
        dec = solution.decision or {}
        result["max_drop"] = {"allowed": cfg.max_drop,
                              "predicted_drop": 100 * dec.get("predicted_drop", float("nan")),
                              "drop_sd": 100 * dec.get("drop_sd", float("nan")),
                              "val_drop": 100 * (orig_val - after.accuracy),
                              "test_drop": 100 * (base_test.accuracy - test.accuracy),
                              "reference_shortfall": None if not dec.get("reference") else
                              100 * dec["reference"]["shortfall"]}
    with run.lock():
        save_model(run.final_dir / "model.pt", pruned, spec,
                   {k: v for k, v in result.items() if k != "history"})
        run.save_final(result)
    return result
