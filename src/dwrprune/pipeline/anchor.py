"""Stage 2b (optional, ``anchors`` > 0): measure one-axis points at the final horizon.

The predictor learns accuracy after short collection fine-tunes; the user gets the accuracy
after the final one.  Before choosing, this stage prunes the ``anchors`` best-predicted
one-axis points under the budget (width-, depth- or resolution-only) from the original and
fine-tunes each with the final recipe, recording its validation accuracy
(:mod:`dwrprune.anchors` turns them into a correction and a measured alternative).  Each
anchor is saved under ``run/anchors/`` as it finishes (a stopped run resumes), and when the
plan keeps an anchor, the final stage takes its model instead of fine-tuning it again.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from tqdm.auto import tqdm

from ..anchors import Anchor
from ..engine import evaluate
from ..shrink import Shrinker
from .config import PipelineConfig
from .data import DataSource
from .finetune import finetune_point
from .points import ranked_one_axis_points
from .run import Run


def anchor_points(run: Run, shrinker: Shrinker, cfg: PipelineConfig, budget: float
                  ) -> list[tuple[str, tuple[float, float, float]]]:
    """The ``cfg.anchors`` one-axis points under ``budget`` the predictor rates best."""
    if cfg.anchors <= 0:
        return []
    pts = ranked_one_axis_points(run.predictor()[0], shrinker, budget)
    return pts[:cfg.anchors]


def measured_anchors(run: Run, shrinker: Shrinker, cfg: PipelineConfig, budget: float,
                     custom_train_fn: bool = False) -> list[Anchor]:
    """The anchors of ``budget`` already measured with the config's final recipe."""
    out = []
    for name, p in anchor_points(run, shrinker, cfg, budget):
        res = run.anchor_result(run.anchor_settings(cfg, p, custom_train_fn))
        if res is not None:
            out.append(Anchor(name, *p, res["val_acc"]))
    return out


def measure_anchors(model: nn.Module, data: DataSource, cfg: PipelineConfig,
                    shrinker: Shrinker, run: Run, budget: float | None = None,
                    progress: bool = True, train_fn: Callable | None = None) -> list[Anchor]:
    """Fine-tune the run's anchors for ``budget`` (default: the config's) that are not yet
    measured; returns them all."""
    budget = cfg.budget if budget is None else budget
    for name, p in anchor_points(run, shrinker, cfg, budget):
        settings = run.anchor_settings(cfg, p, train_fn is not None)
        if run.anchor_result(settings) is not None:
            continue
        folder = run.anchor_dir(settings)
        pruned, spec, before, history = finetune_point(model, data, cfg, shrinker, p, folder,
                                                       progress, train_fn)
        res = spec["input"]["resolution"]
        val = evaluate(pruned, data.loader("val", res), progress=progress, desc="val (anchor)")
        result = {"name": name, "settings": settings, "budget": budget,
                  "val_acc_before_finetune": before.accuracy, "val_acc": val.accuracy,
                  "val_loss": val.loss, "history": history}
        with run.lock():
            run.save_anchor(result, pruned, spec)
        tqdm.write(f"[anchor] {name:16s} d={p[0]:.3f} w={p[1]:.3f} r={p[2]:.3f} val "
                   f"{100 * before.accuracy:.2f}% -> {100 * val.accuracy:.2f}% after the "
                   "final recipe")
    return measured_anchors(run, shrinker, cfg, budget, train_fn is not None)


__all__ = ["anchor_points", "measure_anchors", "measured_anchors"]
