"""The comprehensive pruning pipeline (Wang et al., ICML 2021), stage by stage.

    collect  -> iterative pruning + short fine-tunes along d, w and r, plus mixed points,
                each sample written to the run's SQLite store as it finishes;
    fit      -> the accuracy predictor (MAP) on the samples, LOO-selected;
    plan     -> (d*, w*, r*) for one or many budgets (KKT, then exact MACs);
    finetune -> prune the original model to the chosen point, fine-tune, test once;
    report   -> JSON + Markdown + plots.

Every stage reads and writes one run folder, so each can be run (and re-run) on its own:

    run/config.yaml      resolved configuration        run/samples.sqlite  the sample store
    run/models/*.pt      chain models (portable)       run/block_order.json  depth ranking
    run/predictor.json   fitted MAP + LOO record       run/plan.json       chosen point(s)
    run/final/           final fine-tune (resumable) and model.pt
    run/report/          report.json, report.md, *.png

Samples and choices use the validation split; the test set is touched once, at the end.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import distributed
from .checkpoint import load, save_json, save_model
from .costmath import kept_blocks, kept_resolution
from .engine import TrainConfig, evaluate, train
from .errors import DwrpruneError
from .executors import (
    Executor,
    LocalExecutor,
    Node,
    PortableModel,
    Resources,
    check_portable,
    create_executor,
    raise_failures,
    run_graph,
)
from .predictor import Predictor, fit_predictor
from .shrink import Shrinker
from .solver import Solution, solve
from .store import Sample, SampleStore, check_same_config


# ---------------------------------------------------------------------------- configuration
@dataclass
class PipelineConfig:
    """Everything a run needs; every field is also a CLI option and a YAML key."""

    # data
    data: str = "fashion-mnist"
    data_dir: str | None = None
    val_fraction: float = 0.1
    batch_size: int = 128
    workers: int = 0
    # what may be pruned and how
    transitions: bool = False
    depth_criterion: str = "loss"
    channel_criterion: str = "l1"
    round_to: int | None = None
    width_allocation: str = "uniform"  # or "autobot": learned per-layer widths (AutoBot)
    autobot_steps: int = 200
    # sample collection
    depth_steps: list[float] = field(default_factory=lambda: [0.86, 0.71, 0.57, 0.43, 0.29])
    width_steps: list[float] = field(default_factory=lambda: [0.875, 0.75, 0.625, 0.5, 0.375])
    resolution_steps: list[float] = field(default_factory=lambda: [0.86, 0.71, 0.57, 0.43])
    mixed_points: list[list[float]] = field(default_factory=lambda: [
        [0.71, 0.75, 0.86], [0.57, 0.875, 0.71], [0.86, 0.625, 0.71]])
    holdout_points: list[list[float]] = field(default_factory=lambda: [
        [0.57, 0.75, 0.86], [0.86, 0.75, 0.71], [0.71, 0.625, 1.0], [0.43, 0.875, 0.86],
        [1.0, 0.625, 0.86]])
    finetune_steps: int = 200
    mixed_finetune_steps: int | None = None  # default: twice finetune_steps
    finetune_lr: float = 0.01
    train_subset: int | None = None
    val_subset: int | None = None
    bn_samples: bool = False
    recal_batches: int = 20
    seed: int = 0
    # predictor
    families: list[str] = field(default_factory=lambda: ["separable", "cp", "full"])
    max_degree: int = 3
    max_rank: int = 2
    monotone: str = "prefer"
    fit_bn_samples: bool = False
    # solver
    budget: float = 0.5
    lower_bounds: list[float] | None = None  # default: the sampled range of each axis
    # final fine-tune
    final_epochs: int = 10
    final_lr: float = 0.02
    final_subset: int | None = None
    distill: float = 0.0
    label_smoothing: float = 0.0
    # where sample jobs run (never changes results; see dwrprune.executors)
    executor: str = "local"
    ray_address: str | None = None
    job_cpus: float = 1.0
    job_gpus: float = 0.0
    retries: int = 2

    COLLECT_FIELDS = ("data", "data_dir", "val_fraction", "batch_size", "transitions",
                      "depth_criterion", "channel_criterion", "round_to", "width_allocation",
                      "autobot_steps", "depth_steps",
                      "width_steps", "resolution_steps", "mixed_points", "holdout_points",
                      "finetune_steps", "mixed_finetune_steps", "finetune_lr", "train_subset",
                      "val_subset", "bn_samples", "recal_batches", "seed")

    def collect_config(self) -> dict:
        return {k: getattr(self, k) for k in self.COLLECT_FIELDS}

    @classmethod
    def collect_defaults(cls) -> dict:
        return PipelineConfig().collect_config()

    def validate(self) -> None:
        if not 0.0 < self.budget < 1.0:
            raise DwrpruneError(f"budget must be in (0, 1) (fraction of the original MACs), "
                                f"got {self.budget}")
        for name in ("depth_steps", "width_steps", "resolution_steps"):
            vals = getattr(self, name)
            if any(not 0.0 < v <= 1.0 for v in vals):
                raise DwrpruneError(f"{name} must be fractions in (0, 1], got {vals}")
            if list(vals) != sorted(vals, reverse=True):
                raise DwrpruneError(f"{name} must decrease (iterative pruning), got {vals}")
        for name in ("mixed_points", "holdout_points"):
            for p in getattr(self, name):
                if len(p) != 3 or any(not 0.0 < v <= 1.0 for v in p):
                    raise DwrpruneError(f"{name} entries must be [d, w, r] in (0, 1], got {p}")
        if self.finetune_steps < 0:
            raise DwrpruneError("finetune_steps must be >= 0")
        if self.lower_bounds is not None and len(self.lower_bounds) != 3:
            raise DwrpruneError("lower_bounds must be [d, w, r]")
        if self.executor not in ("local", "ray"):
            raise DwrpruneError(f"executor must be local or ray, got {self.executor!r}")
        if self.job_cpus <= 0 or self.job_gpus < 0 or self.retries < 0:
            raise DwrpruneError("job_cpus must be > 0, job_gpus >= 0 and retries >= 0")
        if self.width_allocation not in ("uniform", "autobot"):
            raise DwrpruneError(f"width_allocation must be uniform or autobot, got "
                                f"{self.width_allocation!r}")

    @classmethod
    def from_dict(cls, values: dict) -> PipelineConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise DwrpruneError(f"unknown pipeline options {unknown}; known: {sorted(names)}")
        cfg = cls(**values)
        cfg.validate()
        return cfg


PRESETS: dict[str, dict] = {
    # Whole pipeline on the bundled ResNet-20 in about 10 minutes on 2 cores.
    "quick": {"depth_criterion": "weight_norm", "depth_steps": [0.71, 0.43],
              "width_steps": [0.75, 0.5], "resolution_steps": [0.79, 0.57],
              "mixed_points": [[0.71, 0.75, 0.79]],
              "holdout_points": [[0.57, 0.75, 0.86], [0.86, 0.75, 0.71], [0.71, 0.625, 1.0],
                                 [0.43, 0.875, 0.86], [1.0, 0.625, 0.86]],
              "finetune_steps": 30, "mixed_finetune_steps": 30, "train_subset": 4000,
              "val_subset": 1000, "final_epochs": 1, "final_subset": 10000,
              "max_degree": 2, "recal_batches": 10},
    # The settings of the README's full run (about an hour on 2 cores for ResNet-20).
    "full": {"finetune_steps": 150, "val_subset": None, "final_epochs": 8,
             "final_lr": 0.02, "distill": 0.5},
}


def resolve_config(preset: str | None = None, **overrides) -> PipelineConfig:
    """Defaults < preset < overrides (YAML and CLI)."""
    values: dict = {}
    if preset:
        if preset not in PRESETS:
            raise DwrpruneError(f"unknown preset {preset!r}; available: {', '.join(PRESETS)}")
        values.update(PRESETS[preset])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return PipelineConfig.from_dict(values)


# ---------------------------------------------------------------------------- data and training
class DataSource(Protocol):
    """Where images come from, at any resolution: the pipeline never builds loaders itself."""

    def loader(self, split: str, resolution: int, *, shuffle: bool = False,
               subset: int | None = None, seed: int = 0) -> DataLoader: ...


@dataclass
class DatasetSource:
    """A :class:`DataSource` over :func:`dwrprune.create_dataset`."""

    name: str = "fashion-mnist"
    data_dir: str | None = None
    val_fraction: float = 0.1
    batch_size: int = 128
    workers: int = 0

    def loader(self, split: str, resolution: int, *, shuffle: bool = False,
               subset: int | None = None, seed: int = 0) -> DataLoader:
        from .data import create_dataset, make_loader

        ds = create_dataset(self.name, split, data_dir=self.data_dir, resolution=resolution,
                            val_fraction=self.val_fraction, subset=subset, subset_seed=seed)
        return make_loader(ds, self.batch_size, shuffle=shuffle, seed=seed,
                           num_workers=self.workers)

    @classmethod
    def from_config(cls, cfg: PipelineConfig) -> DatasetSource:
        return cls(cfg.data, cfg.data_dir, cfg.val_fraction, cfg.batch_size, cfg.workers)

    @property
    def info(self):
        from .data import dataset_info

        return dataset_info(self.name, self.data_dir)


def check_validation_split(data: DataSource, resolution: int) -> None:
    """Samples and choices are made on validation data: refuse a source without any."""
    try:
        n = len(data.loader("val", resolution).dataset)
    except DwrpruneError:
        raise
    except Exception as e:  # noqa: BLE001 - a user's DataSource may raise anything here
        raise DwrpruneError(
            f"the data source has no validation split ({type(e).__name__}: {e}); dwrprune "
            "measures samples on data held out of training, never on the test set") from None
    if n == 0:
        raise DwrpruneError("the validation split is empty; raise --val-fraction")


FinetuneFn = Callable[[nn.Module, DataLoader, int, float, int], None]


def default_finetune(model: nn.Module, loader: DataLoader, steps: int, lr: float,
                     seed: int) -> None:
    """Short fine-tune for a sample: SGD + cosine over ``steps`` batches."""
    train(model, loader, TrainConfig(steps=steps, lr=lr, seed=seed), progress=False, log=False)


def model_fingerprint(model: nn.Module) -> str:
    h = hashlib.sha256(json.dumps(getattr(model, "dwrprune_spec", None), sort_keys=True,
                                  default=str).encode())
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------- jobs
@dataclass
class Job:
    key: str
    kind: str  # original | chain | mixed | holdout | bn_recal
    point: tuple[float, float, float]  # absolute target (d, w, r)
    chain: str | None = None
    step: int | None = None
    parent: str | None = None


def plan_jobs(cfg: PipelineConfig, n_blocks: int, base_res: int, min_res: int) -> list[Job]:
    """The deterministic job list of a collection; chain steps that would realise the same
    point as the previous step (whole blocks, whole pixels) are dropped."""
    jobs = [Job("orig", "original", (1.0, 1.0, 1.0))]

    def chain(axis: str, values: list[float], realise: Callable[[float], float]):
        parent, last, step = "orig", 1.0, 0
        for v in values:
            real = realise(v)
            if real >= last - 1e-9 or real <= 0:
                continue
            point = tuple(real if a == axis else 1.0 for a in "dwr")
            jobs.append(Job(f"{axis}/{step}", "chain", point, axis, step, parent))
            parent, last, step = f"{axis}/{step}", real, step + 1

    if n_blocks:
        chain("d", cfg.depth_steps, lambda v: kept_blocks(n_blocks, v) / n_blocks)
    chain("w", cfg.width_steps, lambda v: v)

    def real_r(v):
        px = kept_resolution(base_res, v)
        return px / base_res if px >= min_res else 0.0

    chain("r", cfg.resolution_steps, real_r)
    for kind, points in (("mixed", cfg.mixed_points), ("holdout", cfg.holdout_points)):
        for i, p in enumerate(points):
            d = p[0] if n_blocks else 1.0
            r = max(p[2], min_res / base_res)
            jobs.append(Job(f"{'mix' if kind == 'mixed' else 'hold'}/{i}", kind, (d, p[1], r)))
    if cfg.bn_samples:
        for j in [j for j in jobs if j.kind in ("chain", "mixed")]:
            jobs.append(Job(f"bn/{j.key}", "bn_recal", j.point))
    return jobs


def config_shrinker(model: nn.Module, cfg: PipelineConfig, depth_criterion: str,
                    criterion_data: dict, block_order: list[str] | None,
                    width_allocation: str) -> Shrinker:
    """The Shrinker a pipeline config describes (collection and final stage share it)."""
    return Shrinker(model, transitions=cfg.transitions, depth_criterion=depth_criterion,
                    channel_criterion=cfg.channel_criterion, round_to=cfg.round_to,
                    criterion_data=criterion_data, block_order=block_order,
                    width_allocation=width_allocation, autobot_steps=cfg.autobot_steps)


def ranked_shrinker(model: nn.Module, cfg: PipelineConfig, block_order: list[str] | None,
                    data: DataSource | None = None) -> Shrinker:
    """The shrinker the final stage prunes with: blocks in the order ranked at collection.
    Without ``data`` it answers cost queries only (uniform width: the same exact MACs)."""
    alloc = cfg.width_allocation if data is not None else "uniform"
    crit = {}
    if data is not None and (alloc == "autobot" or cfg.channel_criterion in
                             ("taylor", "autobot")):
        res = model.dwrprune_spec["input"]["resolution"]
        crit = {"train_loader": data.loader("train", res, shuffle=True, seed=cfg.seed)}
    return config_shrinker(model, cfg, "weight_norm", crit, block_order, alloc)


class SampleJobs:
    """Computes one sample from its :class:`Job`, in whichever process the executor picks.

    It holds only what a worker needs (the original model as a :class:`PortableModel`, the
    data source, the config, the saved block ranking, the fine-tune function); the original
    model's Shrinker is built once per process and cached, never pickled.
    """

    def __init__(self, model: nn.Module, data: DataSource, cfg: PipelineConfig,
                 block_order: list[str] | None, finetune: FinetuneFn | None = None):
        self.original, self.data, self.cfg = PortableModel(model), data, cfg
        self.block_order = block_order
        self.finetune = finetune or default_finetune
        self._shrinker_cache: Shrinker | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_shrinker_cache": None}

    @property
    def model(self) -> nn.Module:
        return self.original.model

    @property
    def base_res(self) -> int:
        return self.model.dwrprune_spec["input"]["resolution"]

    @property
    def shrinker(self) -> Shrinker:
        """The original model's Shrinker (ranks the blocks if no ranking is given yet)."""
        if self._shrinker_cache is None:
            self._shrinker_cache = self._shrinker(self.model, self.base_res, self.block_order)
        return self._shrinker_cache

    def _criterion_data(self, res: int) -> dict:
        if (self.cfg.depth_criterion != "loss" and self.cfg.channel_criterion != "taylor"
                and self.cfg.width_allocation == "uniform"):
            return {}
        return {"train_loader": self.data.loader("train", res, shuffle=True,
                                                 subset=self.cfg.train_subset,
                                                 seed=self.cfg.seed),
                "val_loader": self.data.loader("val", res, subset=self.cfg.val_subset)}

    def _shrinker(self, model: nn.Module, res: int, block_order=None) -> Shrinker:
        return config_shrinker(model, self.cfg, self.cfg.depth_criterion,
                               self._criterion_data(res), block_order,
                               self.cfg.width_allocation)

    def _recal_loader(self, res: int) -> DataLoader:
        return self.data.loader("train", res, shuffle=True, subset=self.cfg.train_subset,
                                seed=self.cfg.seed)

    def __call__(self, job: Job, parent: PortableModel | None
                 ) -> tuple[Sample, PortableModel | None]:
        """The sample of ``job`` (``parent``: the fine-tuned model of the previous chain step,
        None for the original), and for chain steps the fine-tuned model the next step
        starts from."""
        t0 = time.perf_counter()
        cfg = self.cfg
        steps = 0
        # Same sample whatever ran before in this process (BN re-calibration augments with
        # the global RNG): the job, not the executor or the job order, fixes the randomness.
        torch.manual_seed(cfg.seed * 1_000_003 + zlib.crc32(job.key.encode()))
        if job.kind == "original":
            model, spec = self.model, self.model.dwrprune_spec
        else:
            model, spec = self._prune_job(job, parent.model if parent else self.model)
            if job.kind != "bn_recal":
                steps = cfg.finetune_steps if job.kind == "chain" else (
                    cfg.mixed_finetune_steps if cfg.mixed_finetune_steps is not None
                    else 2 * cfg.finetune_steps)
                if steps:
                    res = spec["input"]["resolution"]
                    self.finetune(model, self.data.loader("train", res, shuffle=True,
                                                          subset=cfg.train_subset,
                                                          seed=cfg.seed + len(job.key)),
                                  steps, cfg.finetune_lr, cfg.seed)
        res = spec["input"]["resolution"]
        ev = evaluate(model, self.data.loader("val", res, subset=cfg.val_subset))
        point = (spec.get("arch") or {}).get("point", {"d": 1.0, "w": 1.0, "r": 1.0})
        from .cost import count_macs, count_params

        ckpt = f"models/{job.key.replace('/', '_')}.pt" if job.kind == "chain" else None
        sample = Sample(job.key, job.kind, point["d"], point["w"], point["r"], res,
                        count_macs(model, res), count_params(model), ev.accuracy, ev.loss,
                        steps, cfg.seed, time.perf_counter() - t0, job.chain, job.step,
                        job.parent, ckpt)
        if ckpt is None:
            return sample, None
        return sample, PortableModel(model.eval())  # the shrunk model carries its spec

    def _prune_job(self, job: Job, parent: nn.Module) -> tuple[nn.Module, dict]:
        d, w, r = job.point
        if job.kind == "chain":
            pspec = parent.dwrprune_spec
            ppoint = (pspec.get("arch") or {}).get("point", {"d": 1.0, "w": 1.0, "r": 1.0})
            pres = pspec["input"]["resolution"]
            shr = self._shrinker(parent, pres) if parent is not self.model else self.shrinker
            n_total = len(self.shrinker.blocks)
            if job.chain == "d":  # remove whole blocks, re-ranked on the fine-tuned parent
                keep = round(d * n_total)  # the parent's remaining blocks are all kept ones
                rel = (keep / len(shr.blocks), 1.0, 1.0)
            elif job.chain == "w":
                rel = (1.0, w / ppoint["w"], 1.0)
            else:
                rel = (1.0, 1.0, kept_resolution(self.base_res, r) / pres)
            out = shr.shrink(*rel, recalibrate=self._recal_loader,
                             recal_batches=self.cfg.recal_batches)
        else:
            out = self.shrinker.shrink(d, w, r, recalibrate=self._recal_loader,
                                       recal_batches=self.cfg.recal_batches)
        return out.model, out.spec


class Collector:
    """Drives a collection against a run folder: plans the jobs, hands them to an executor
    (chain steps after their parent), and writes each finished sample (and chain model) to
    the run folder as it arrives; resumable at job granularity."""

    def __init__(self, model: nn.Module, data: DataSource, cfg: PipelineConfig,
                 run_dir: str | Path, finetune: FinetuneFn | None = None,
                 progress: bool = True):
        self.model, self.data, self.cfg = model.eval(), data, cfg
        self.run = Path(run_dir)
        self.progress = progress
        spec = getattr(model, "dwrprune_spec", None)
        if spec is None:
            raise DwrpruneError("the model needs a dwrprune spec (load it with dwrprune.load, "
                                "or set model.dwrprune_spec = make_spec(...))")
        if spec.get("arch"):
            raise DwrpruneError("collect samples from the original (unpruned) model")
        self.base_res = spec["input"]["resolution"]
        check_validation_split(data, self.base_res)
        self.store = SampleStore(self.run / "samples.sqlite")
        self.store.bind(cfg.collect_config(), model_fingerprint(model),
                        PipelineConfig.collect_defaults())
        self.runner = SampleJobs(model, data, cfg, self._saved_order(), finetune)
        self.shrinker = self.runner.shrinker
        self._save_order()
        self.jobs = plan_jobs(cfg, len(self.shrinker.blocks), self.base_res,
                              self.shrinker.min_resolution)

    def _saved_order(self):
        p = self.run / "block_order.json"
        return json.loads(p.read_text())["order"] if p.exists() else None

    def _save_order(self) -> None:
        p = self.run / "block_order.json"
        order = [b.name for b in self.shrinker.block_order()]
        if not p.exists():
            save_json(p, {"criterion": self.cfg.depth_criterion, "order": order,
                          "scores": getattr(self.shrinker, "block_scores", {})})
        self.runner.block_order = order  # workers rebuild the shrinker with this ranking

    def _parent(self, job: Job) -> PortableModel | None:
        if job.kind != "chain" or job.parent == "orig":
            return None
        path = self.run / self.store.get(job.parent).checkpoint
        if not path.exists():
            raise DwrpruneError(
                f"chain model {path} of finished sample {job.parent!r} is missing, so "
                f"chain {job.chain!r} cannot continue; restore the file, or start "
                "the collection in a new --out folder")
        return PortableModel(load(path))

    def _write(self, sample: Sample, model: PortableModel | None) -> None:
        """Model first, then the sample row: a row in the store means its file exists."""
        if model is not None:
            save_model(self.run / sample.checkpoint, model.model, model.model.dwrprune_spec,
                       {"job": sample.key, "val_acc": sample.val_acc})
        self.store.add(sample)

    def run_all(self, executor: Executor | None = None, resources: Resources | None = None,
                wait_for_lock: bool = False) -> SampleStore:
        """Run every job not yet in the store; with a parallel executor, the three chains
        and the mixed points run side by side.  Failed jobs are reported at the end.  Another
        process collecting into the same folder is an error (or, ``wait_for_lock``, waited
        for)."""
        executor = executor or LocalExecutor()
        if executor.name != "local":
            check_portable(self.model)
        with self.store.exclusive(wait_for_lock, on_wait=tqdm.write):
            return self._run_all(executor, resources)

    def _run_all(self, executor: Executor, resources: Resources | None) -> SampleStore:
        finished = {j.key for j in self.jobs if self.store.has(j.key)}
        bar = tqdm(total=len(self.jobs), initial=len(finished), desc="collect", unit="sample",
                   disable=not self.progress)

        def node(job: Job) -> Node:
            def done(result):
                sample, model = result
                self._write(sample, model)
                bar.update(1)
                bar.write(f"[collect] {job.key:8s} d={sample.d:.3f} w={sample.w:.3f} "
                          f"r={sample.r:.3f} MACs={sample.macs / 1e6:.2f}M "
                          f"val_acc={sample.val_acc * 100:.2f}% ({sample.seconds:.0f}s)")

            after = job.parent if job.kind == "chain" and job.parent != "orig" else None
            return Node(job.key, lambda: (self.runner, (job, self._parent(job))), done, after,
                        resources or Resources())

        failures = run_graph([node(j) for j in self.jobs], executor, finished,
                             on_failure=lambda f: bar.write(f"[collect] {f.key} FAILED: "
                                                            f"{f.error}"))
        bar.close()
        raise_failures(failures, "sample jobs", str(self.store.path))
        return self.store


def collect(model: nn.Module, data: DataSource, config: PipelineConfig, run_dir,
            finetune: FinetuneFn | None = None, progress: bool = True,
            executor: Executor | None = None, wait_for_lock: bool = False) -> SampleStore:
    """Stage 1: collect (d, w, r, accuracy) samples into ``run_dir/samples.sqlite``.
    ``executor``: where the jobs run (default: the one ``config.executor`` names, see
    :mod:`dwrprune.executors`)."""
    collector = Collector(model, data, config, run_dir, finetune, progress)
    own = executor is None
    if own:
        executor = create_executor(config.executor, config.ray_address, config.retries)
    try:
        return collector.run_all(executor, Resources(config.job_cpus, config.job_gpus),
                                 wait_for_lock)
    finally:
        if own:
            executor.close()


# ---------------------------------------------------------------------------- fit
def fit_samples(store: SampleStore, cfg: PipelineConfig) -> tuple[Predictor, dict]:
    """Stage 2: fit the MAP on the non-holdout samples; score it on the holdout points."""
    kinds = ("original", "chain", "mixed") + (("bn_recal",) if cfg.fit_bn_samples else ())
    train_s = store.samples(kinds=kinds)
    if not train_s:
        raise DwrpruneError(f"no samples in {store.path}; run the collect stage first")
    X = np.array([[s.d, s.w, s.r] for s in train_s])
    y = np.array([s.val_acc for s in train_s])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pred = fit_predictor(X, y, [s.key for s in train_s], cfg.families, cfg.max_degree,
                             cfg.max_rank, cfg.monotone)
    for wmsg in caught:
        tqdm.write(f"warning: {wmsg.message}")
    hold = store.samples(kinds=("holdout",))
    holdout = {"count": len(hold), "points": []}
    if hold:
        errs = []
        for s in hold:
            p = pred(s.d, s.w, s.r)
            errs.append(p - s.val_acc)
            holdout["points"].append({"key": s.key, "d": s.d, "w": s.w, "r": s.r,
                                      "measured": s.val_acc, "predicted": p})
        holdout["mae"] = float(np.mean(np.abs(errs)))
        holdout["rmse"] = float(np.sqrt(np.mean(np.square(errs))))
    return pred, holdout


# ---------------------------------------------------------------------------- plan
def exact_cost_grid(shrinker: Shrinker, d: float, lower: list[float], points: int = 25) -> dict:
    """Exact MACs ratios over a (w, r) grid at depth ``d``: the budget contour of the report."""
    base = shrinker.macs(1, 1, 1)
    ws = np.linspace(lower[1], 1, points)
    rs = np.linspace(max(lower[2], shrinker.min_resolution / shrinker.base_resolution), 1,
                     points)
    ratio = [[shrinker.macs(d, float(w), float(r)) / base for w in ws] for r in rs]
    return {"d": d, "w": ws.tolist(), "r": rs.tolist(), "ratio": ratio}


def solve_budget(pred: Predictor, shrinker: Shrinker, budget: float,
                 lower: list[float] | None = None) -> Solution:
    """Stage 3: the best realisable (d, w, r) under ``budget`` for a fitted predictor."""
    lo = list(lower) if lower is not None else list(pred.lower)
    lo[2] = max(lo[2], shrinker.min_resolution / shrinker.base_resolution)
    lo = [min(max(v, 1e-3), 1.0) for v in lo]
    return solve(pred, shrinker.macs, shrinker.macs(1, 1, 1), budget, tuple(lo),
                 len(shrinker.blocks), shrinker.base_resolution, shrinker.min_resolution)


# ---------------------------------------------------------------------------- final stage
def finetune_final(model: nn.Module, data: DataSource, cfg: PipelineConfig, shrinker: Shrinker,
                   solution: Solution, run_dir, progress: bool = True,
                   train_fn: Callable | None = None) -> dict:
    """Stage 4: prune the original to the chosen point, fine-tune, evaluate on test once."""
    from .cost import cost_report

    run = Path(run_dir)
    progress = progress and distributed.is_main()
    b = solution.best
    out = shrinker.shrink(b.d, b.w, b.r, recalibrate=lambda res: data.loader(
        "train", res, shuffle=True, seed=cfg.seed), recal_batches=max(cfg.recal_batches, 20))
    pruned, spec = out.model, out.spec
    res = spec["input"]["resolution"]
    val = data.loader("val", res)
    before = evaluate(pruned, val, progress=progress, desc="val (pruned)")
    tcfg = TrainConfig(epochs=cfg.final_epochs, lr=cfg.final_lr, seed=cfg.seed,
                       kd_alpha=cfg.distill, label_smoothing=cfg.label_smoothing)
    loader = data.loader("train", res, shuffle=True, subset=cfg.final_subset, seed=cfg.seed)
    teacher = copy.deepcopy(model).eval() if cfg.distill > 0 else None
    if train_fn is not None:
        train_fn(pruned, loader, tcfg, teacher)
        history = []
    else:
        history = train(pruned, loader, tcfg, val_loader=val, teacher=teacher,
                        checkpoint_dir=run / "final", spec=spec, progress=progress).history
    pruned.eval()
    after = evaluate(pruned, val, progress=progress, desc="val (fine-tuned)")
    test = evaluate(pruned, data.loader("test", res), progress=progress, desc="test")
    base_res = shrinker.base_resolution
    base_test = evaluate(model, data.loader("test", base_res), progress=progress,
                         desc="test (original)")
    if not distributed.is_main():  # under torchrun: rank 0 measures and writes
        return {"val_acc": after.accuracy, "test_acc": test.accuracy}
    orig_cost = cost_report(model, base_res, threads=1)
    new_cost = cost_report(pruned, res, threads=1)
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
    save_model(run / "final" / "model.pt", pruned, spec,
               {k: v for k, v in result.items() if k != "history"})
    save_json(run / "final.json", result)
    return result


# ---------------------------------------------------------------------------- run folder
class Run:
    """A run folder: its resolved config, source checkpoint, and the stage outputs."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    def save_config(self, cfg: PipelineConfig, checkpoint: str) -> None:
        """Write the resolved config; a changed *collection* config is refused up front."""
        if self.config_path.exists():
            old, _ = self.load_config()
            check_same_config(old.collect_config(), cfg.collect_config(), str(self.path),
                              PipelineConfig.collect_defaults())
        self.path.mkdir(parents=True, exist_ok=True)
        body = {"checkpoint": str(checkpoint), **asdict(cfg)}
        text = yaml.safe_dump(body, sort_keys=False)
        (self.path / ".config.yaml.tmp").write_text(text)
        (self.path / ".config.yaml.tmp").replace(self.config_path)

    def load_config(self, **overrides) -> tuple[PipelineConfig, str]:
        if not self.config_path.exists():
            raise DwrpruneError(f"{self.path} is not a dwrprune run folder (no config.yaml); "
                                "start one with `dwrprune prune` or `dwrprune collect`")
        body = yaml.safe_load(self.config_path.read_text())
        checkpoint = body.pop("checkpoint")
        body.update({k: v for k, v in overrides.items() if v is not None})
        return PipelineConfig.from_dict(body), checkpoint

    def store(self) -> SampleStore:
        p = self.path / "samples.sqlite"
        if not p.exists():
            raise DwrpruneError(f"{self.path} has no samples yet; run the collect stage first")
        return SampleStore(p)

    def predictor(self) -> tuple[Predictor, dict]:
        p = self.path / "predictor.json"
        if not p.exists():
            raise DwrpruneError(f"{self.path} has no fitted predictor; run the fit stage first")
        body = json.loads(p.read_text())
        return Predictor.from_dict(body["predictor"]), body.get("holdout", {})

    def save_predictor(self, pred: Predictor, holdout: dict) -> None:
        save_json(self.path / "predictor.json", {"predictor": pred.to_dict(),
                                                 "holdout": holdout})

    def block_order(self) -> list[str] | None:
        p = self.path / "block_order.json"
        return json.loads(p.read_text())["order"] if p.exists() else None

    def shrinker(self, model: nn.Module, cfg: PipelineConfig,
                 data: DataSource | None = None) -> Shrinker:
        """The original model's shrinker with the ranking saved at collection time.  Without
        ``data`` it answers cost queries only (uniform width: the same exact MACs bound)."""
        return ranked_shrinker(model, cfg, self.block_order(), data)

    def plan(self) -> dict:
        p = self.path / "plan.json"
        if not p.exists():
            raise DwrpruneError(f"{self.path} has no plan; run the plan stage first")
        return json.loads(p.read_text())


def prune(model: nn.Module, data: DataSource, config: PipelineConfig, run_dir, *,
          checkpoint: str = "<in-memory>", finetune: FinetuneFn | None = None,
          train_fn: Callable | None = None, progress: bool = True) -> dict:
    """The whole pipeline: collect, fit, plan, fine-tune and report.  Returns final.json."""
    from .report import write_report

    run = Run(run_dir)
    run.save_config(config, checkpoint)
    store = collect(model, data, config, run.path, finetune, progress)
    pred, holdout = fit_samples(store, config)
    run.save_predictor(pred, holdout)
    shr = run.shrinker(model, config, data)
    sol = solve_budget(pred, shr, config.budget, config.lower_bounds)
    save_json(run.path / "plan.json", {"budget": config.budget, "solution": sol.to_dict(),
                                       "grid": exact_cost_grid(shr, sol.best.d, pred.lower)})
    result = finetune_final(model, data, config, shr, sol, run.path, progress, train_fn)
    write_report(run.path)
    return result
