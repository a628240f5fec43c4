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
from ..pruning.shrink import Shrinker
from ..search.solver import Solution
from ..training import distributed
from ..training.engine import TrainConfig, evaluate, train
from .config import PipelineConfig
from .data import DataSource
from .run import Run


def final_recipe(cfg: PipelineConfig) -> TrainConfig:
    """The final fine-tune's recipe."""
    return TrainConfig(epochs=cfg.final_epochs, lr=cfg.final_lr, seed=cfg.seed,
                       kd_alpha=cfg.distill, label_smoothing=cfg.label_smoothing)


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
    pruned, spec, before, history = finetune_point(
        model, data, cfg, shrinker, (b.d, b.w, b.r), run.final_dir, progress, train_fn)
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
                  "resolution": res},
        "predicted_val_acc": b.predicted, "val_acc_before_finetune": before.accuracy,
        "val_acc": after.accuracy, "test_acc": test.accuracy,
        "original_test_acc": base_test.accuracy,
        "macs": new_cost.macs, "original_macs": orig_cost.macs,
        "macs_ratio": new_cost.macs / orig_cost.macs,
        "params": new_cost.params, "original_params": orig_cost.params,
        "latency_ms": {str(x.batch_size): x.median_ms for x in new_cost.latency},
        "original_latency_ms": {str(x.batch_size): x.median_ms for x in orig_cost.latency},
        "removed_blocks": [x["name"] for x in spec["arch"]["removed_blocks"]],
        "history": history, "finetune": asdict(tcfg),
    }
    target = cfg.latency_target
    if target is not None:  # the budget was latency: measure the final model on the target
        from ..cost.latency import Reference, measure_ms

        lat = (run.plan().get("latency") or {})
        result["latency_target"] = target.key()
        result["latency_budget_ms"] = lat.get("budget_ms")
        result["measured_latency_ms"] = measure_ms(pruned, res, target)
        if lat.get("original_ms"):  # beside the original: the fraction of its latency
            result["measured_latency_vs_original"] = measure_ms(
                pruned, res, target, reference=Reference(model, base_res, lat["original_ms"]))
    with run.lock():
        save_model(run.final_dir / "model.pt", pruned, spec,
                   {k: v for k, v in result.items() if k != "history"})
        run.save_final(result)
    return result
