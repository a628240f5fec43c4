"""The pipeline in one call, and the checked entry points every stage shares.

    result = dwrprune.prune(model, "fashion-mnist", budget=0.5, out="runs/x")
    result.model      # the fine-tuned pruned model, ready to use
    result.spec       # its ModelSpec (blocks kept, channels per layer, resolution, provenance)
    result.point      # the chosen (d, w, r)
    result.report     # the final figures (final.json)

The command line calls exactly these functions, so Python and CLI users get the same checks:
the config is validated completely, the data is checked against the model, the run folder
is checked writable and locked, all before the first sample is computed.
"""

from __future__ import annotations

import copy
import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..checkpoint import load, save_model
from ..errors import DwrpruneError
from ..io.settings import CHAIN_KEYS
from ..io.spec import ModelSpec, make_spec, spec_of
from ..pruning.analysis import check_model_usable
from ..search.latency import LatencyOutOfReach
from ..training.progress import resolve_progress
from .collection import collect
from .config import PipelineConfig, resolve_config
from .data import (
    DatasetSource,
    DataSource,
    FinetuneFn,
    TorchDataSource,
    check_source,
    complete_contract,
    original_accuracy,
)
from .finetune import finetune_final, result_line
from .fit import fit_run
from .jobs import model_fingerprint
from .run import Run
from .shrinker import run_shrinker
from .solve import plan_run


@dataclass
class PruneResult:
    """What :func:`prune` returns."""

    model: nn.Module
    spec: ModelSpec
    point: dict
    report: dict
    run: Run

    @property
    def model_path(self) -> Path:
        return self.run.final_dir / "model.pt"

    @property
    def report_path(self) -> Path:
        return self.run.path / "report" / "report.md"


_LOCAL_IDS = itertools.count()


def attach_spec(model: nn.Module, example_inputs: torch.Tensor) -> nn.Module:
    """Give a model without a spec one, from an example input batch (N, C, H, W; H == W).

    The model is registered for this process as ``local/<ClassName>-<n>`` (its constructor
    returns a copy of this instance), so the pipeline can rebuild its pruned variants; a
    checkpoint of it loads elsewhere with ``dwrprune.load(path, model=YourNet())``."""
    from ..models import register_model

    if not isinstance(example_inputs, torch.Tensor) or example_inputs.dim() != 4 or \
            example_inputs.shape[-1] != example_inputs.shape[-2]:
        raise DwrpruneError("example_inputs must be an image batch tensor (N, C, H, W) with "
                            "H == W")
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(example_inputs[:1])
    model.train(was)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise DwrpruneError("the model must return class scores (N, num_classes) for "
                            "example_inputs")
    name = f"local/{type(model).__name__}-{next(_LOCAL_IDS)}"
    original = copy.deepcopy(model).cpu()
    register_model(name, min_resolution=8, description="registered by dwrprune.prune")(
        lambda **_: copy.deepcopy(original))
    model.dwrprune_spec = make_spec(name, out.shape[1], example_inputs.shape[1],
                                    example_inputs.shape[-1])
    return model


def as_source(data, cfg: PipelineConfig) -> DataSource:
    """The :class:`DataSource` of ``data``: a dataset name (or None: the config's), any
    object with a ``loader`` method, or your torch data as ``(train, val[, test])`` or
    ``{"train": ..., "val": ..., "test": ...}`` Datasets or DataLoaders."""
    from torch.utils.data import DataLoader, Dataset

    if data is None:
        return DatasetSource.from_config(cfg)
    if isinstance(data, str):
        return DatasetSource.from_config(cfg.replace(data=data))
    if callable(getattr(data, "loader", None)):
        return data
    if isinstance(data, dict) and set(data) <= {"train", "val", "test"}:
        return TorchDataSource(data.get("train"), data.get("val"), data.get("test"),
                               batch_size=cfg.batch_size, workers=cfg.workers)
    if isinstance(data, (tuple, list)) and len(data) in (2, 3):
        return TorchDataSource(*data, batch_size=cfg.batch_size, workers=cfg.workers)
    if isinstance(data, (Dataset, DataLoader)):
        raise DwrpruneError(f"one {type(data).__name__} is not enough: give data=(train, val, "
                            "test), three Datasets or DataLoaders (choices are measured on "
                            "validation data held out of training, the result on test)")
    raise DwrpruneError(f"data must be a dataset name, a DataSource (an object with a loader "
                        f"method), or (train, val, test) torch Datasets or DataLoaders; got "
                        f"{type(data).__name__}")


def start_run(model: nn.Module, data: DataSource, cfg: PipelineConfig, out,
              checkpoint: str = "<in-memory>", keep_original: bool = False) -> Run:
    """Every check a new or resumed run gets before work: model spec, data against model,
    validation split, run folder writable and free; then the config is written (under the
    folder's lock).  ``keep_original``: the model is saved as ``original.pt`` in the run
    folder, which becomes the checkpoint later stages load (a model imported or built in
    memory can then be resumed from the command line)."""
    spec = spec_of(model)
    if spec.pruned:
        raise DwrpruneError("start from the original (unpruned) model; this one is pruned")
    check_model_usable(model)
    spec = complete_contract(model, data, cfg)
    check_source(data, spec)
    original_accuracy(model, data, cfg, spec)
    run = Run(out)
    run.check_writable()
    with run.lock():
        if keep_original:
            checkpoint = str(run.path.resolve() / "original.pt")
        run.save_config(cfg, checkpoint, model_fingerprint(model))
        if keep_original and not Path(checkpoint).exists():
            save_model(checkpoint, model, model.dwrprune_spec, {"original": True})
    return run


def open_run(path, **overrides) -> tuple[PipelineConfig, nn.Module, DataSource, Run]:
    """A run folder's config (with ``overrides``), source model and data source."""
    from ..pretrained import resolve

    run = Run(path)
    cfg, checkpoint = run.load_config(**overrides)
    if checkpoint == "<in-memory>":
        raise DwrpruneError(f"{run.path} was started from an in-memory model; continue it "
                            "from Python with the same model")
    model = load(resolve(checkpoint), check_input=False)
    data = DatasetSource.from_config(cfg)
    complete_contract(model, data, cfg)
    run.check_model(model_fingerprint(model))
    return cfg, model, data, run


def final_stage(model: nn.Module, data: DataSource, cfg: PipelineConfig, run: Run,
                progress=True, train_fn=None) -> dict:
    """Stage 4 on a run folder: prune to plan.json's point, fine-tune, test once."""
    check_source(data, spec_of(model))
    return finetune_final(model, data, cfg, run_shrinker(run, model, cfg, data),
                          run.solution(), run.path, resolve_progress(progress), train_fn)


MAX_EXTENSIONS = 3  # chain extensions one prune call makes to reach a latency budget


def extend_chain(cfg: PipelineConfig, axis: str, value: float) -> PipelineConfig:
    """``cfg`` with the ``axis`` chain (d, w or r) continued down to ``value``: one step
    there, and one half-way where the last step is more than 0.2 above it."""
    key = CHAIN_KEYS["dwr".index(axis)]
    steps = list(getattr(cfg, key))
    last = steps[-1] if steps else 1.0
    new = [round((last + value) / 2, 4), value] if last - value > 0.2 else [value]
    return cfg.replace(**{key: steps + [round(v, 6) for v in new]})


def prune(model: nn.Module, data: DataSource | str | None = None,
          config: PipelineConfig | None = None, out: str | os.PathLike | None = None, *,
          budget: float | None = None, preset: str | None = None,
          example_inputs: torch.Tensor | None = None, checkpoint: str = "<in-memory>",
          finetune: FinetuneFn | None = None, train_fn=None, progress="auto",
          keep_original: bool = False, ignored_layers=None, **options) -> PruneResult:
    """The whole pipeline: collect, fit, plan, fine-tune and report, into run folder ``out``
    (resumable: call again with the same arguments).

    ``data``: a :class:`DataSource`, or a dataset name.  ``config``: a full config, or build
    one from ``preset``, ``budget`` and any :class:`PipelineConfig` field as a keyword.
    ``example_inputs``: for a model without a dwrprune spec (see :func:`attach_spec`).
    ``ignored_layers``: modules of ``model`` (or their names) left exactly as they are (the
    ``ignore`` option): their channels stay whole, blocks holding them are never removed.
    ``data`` may also be torch Datasets or DataLoaders (see :func:`as_source`).
    """
    from .report import alignment_note, write_report

    if out is None:
        raise DwrpruneError("prune needs out= (the run folder)")
    if ignored_layers is not None:
        from ..pruning.analysis import ignored_names

        options["ignore"] = list(ignored_names(model, ignored_layers))
    if config is None:
        config = resolve_config(preset, budget=budget, **options)
    elif budget is not None or preset is not None or options:
        config = config.replace(**({"budget": budget} if budget is not None else {}), **options)
    if isinstance(data, str):  # the run folder records the dataset it was run on
        config = config.replace(data=data)
    if getattr(model, "dwrprune_spec", None) is None:
        if example_inputs is None:
            spec_of(model)  # the error that explains how to give one
        attach_spec(model, example_inputs)
    progress = resolve_progress(progress)
    source = as_source(data, config)
    run = Run(out)
    with run.lock():  # start_run checks the folder and writes the config under it
        config = run.adopt_extensions(config)
        start_run(model, source, config, out, checkpoint, keep_original)
        store = collect(model, source, config, run.path, finetune, progress)
        from .fit import fit_samples, fit_summary
        from .solve import choice_line

        for extension in range(MAX_EXTENSIONS + 1):
            pred, holdout = fit_samples(store, config)
            run.save_predictor(pred, holdout)
            tqdm.write(f"[fit] {fit_summary(pred, holdout)}")
            try:
                plan_run(run, run_shrinker(run, model, config), config)
                break
            except LatencyOutOfReach as e:
                if e.reach is None or extension == MAX_EXTENSIONS:
                    raise
                config = extend_chain(config, *e.reach)
                tqdm.write(f"[plan] {e.budget_ms:.3f} ms lies beyond the sampled box; "
                           f"extending the collection along {e.reach[0]} to "
                           f"{e.reach[1]:.3f}")
                _, written = run.load_config()
                run.save_config(config, written, model_fingerprint(model))
                store = collect(model, source, config, run.path, finetune, progress)
        tqdm.write(f"[plan] {choice_line(run.solution(), run.plan().get('latency'))}")
        result = finetune_final(model, source, config, run_shrinker(run, model, config, source),
                                run.solution(), run.path, progress, train_fn)
        tqdm.write(f"[test] {result_line(result)}")
        if note := alignment_note(result):
            tqdm.write(f"[note] {note}")
        write_report(run.path)
    final = load(run.final_dir / "model.pt")
    return PruneResult(final, spec_of(final), result["point"], result, run)


__all__ = ["PruneResult", "attach_spec", "final_stage", "fit_run", "open_run", "prune",
           "start_run"]
