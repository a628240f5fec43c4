"""Sample jobs: the deterministic job list of a collection, and the function that turns one
job into one (d, w, r, accuracy) sample in whichever process an executor picks.

A chain job prunes the fine-tuned model of the previous step of its chain a little further
(iterative pruning); mixed and hold-out jobs prune the original; every sample is fine-tuned
briefly and measured on the validation split.  With ``max_drop`` set, a reference job
fine-tunes the unpruned model as briefly as a chain step: what the brief fine-tune alone
does to accuracy, which a drop below the original is measured against.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..cost import count_macs, count_params
from ..cost.rounding import kept_blocks, kept_resolution
from ..io.spec import ModelSpec, spec_of
from ..io.store import Sample
from ..pruning.shrink import Shrinker
from ..training.engine import PairedResult, evaluate
from .data import DataSource, FinetuneFn, default_finetune
from .executors import PortableModel
from .shrinker import build_shrinker


def model_fingerprint(model: nn.Module, spec_keys: tuple[str, ...] | None = None) -> str:
    """A hash of the model's spec (only ``spec_keys`` of it, when given) and weights."""
    spec = getattr(model, "dwrprune_spec", None)
    if spec_keys is not None:
        spec = {k: spec.get(k) for k in spec_keys}
    h = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode())
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------- jobs
@dataclass
class Job:
    key: str
    kind: str  # original | reference | chain | mixed | holdout | bn_recal
    point: tuple[float, float, float]  # absolute target (d, w, r)
    chain: str | None = None
    step: int | None = None
    parent: str | None = None


def plan_jobs(cfg, n_blocks: int, base_res: int, min_res: int) -> list[Job]:
    """The deterministic job list of a collection; chain steps that would realise the same
    point as the previous step (whole blocks, whole pixels) are dropped."""
    jobs = [Job("orig", "original", (1.0, 1.0, 1.0))]
    if getattr(cfg, "max_drop", None) is not None:
        jobs.append(Job("ref", "reference", (1.0, 1.0, 1.0)))

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


def job_steps(job: Job, cfg) -> int:
    """The fine-tune steps a job's sample gets (chain steps and the reference
    ``finetune_steps``, mixed and hold-out points ``mixed_finetune_steps``, by default twice
    that; none for the original and BatchNorm re-calibration samples)."""
    if job.kind in ("original", "bn_recal"):
        return 0
    if job.kind in ("chain", "reference"):
        return cfg.finetune_steps
    return (cfg.mixed_finetune_steps if cfg.mixed_finetune_steps is not None
            else 2 * cfg.finetune_steps)


def describe_jobs(jobs: list[Job], cfg) -> str:
    """What a collection will run, in one line: samples, fine-tunes and their steps."""
    tuned = [job_steps(j, cfg) for j in jobs if job_steps(j, cfg)]
    by_steps: dict[int, int] = {}
    for n in tuned:
        by_steps[n] = by_steps.get(n, 0) + 1
    if len(by_steps) == 1:
        tunes = f"{len(tuned)} fine-tunes of {tuned[0]} steps"
    else:
        tunes = f"{len(tuned)} fine-tunes (" + ", ".join(
            f"{k} of {n} steps" for n, k in sorted(by_steps.items())) + ")"
    rest = len(jobs) - len(tuned)
    return (f"{len(jobs)} samples: {tunes} on "
            f"{cfg.train_subset or 'all the'} training images, each measured on "
            f"{cfg.val_subset or 'all the'} validation images"
            + (f", and {rest} measured without fine-tuning" if rest else ""))


def estimate_seconds(todo: list[Job], done: list[Sample], cfg,
                     macs: Callable[[Job], float] | None = None) -> float | None:
    """Seconds the ``todo`` jobs will take one after another, from the ``done`` samples'
    own times: an evaluation (the samples without fine-tuning) plus the fine-tune steps, a
    step costing in proportion to the model's MACs when ``macs`` gives a job's (a pruned
    model trains faster), else alike; None until a fine-tuned sample has been measured."""
    import statistics

    evals = [s.seconds for s in done if not s.finetune_steps]
    eval_s = statistics.median(evals) if evals else 0.0
    tuned = [s for s in done if s.finetune_steps]
    if not tuned:
        return None
    if macs is None:
        step_s = max(statistics.median((s.seconds - eval_s) / s.finetune_steps
                                       for s in tuned), 0.0)
        return sum(eval_s + job_steps(j, cfg) * step_s for j in todo)
    per_mac = max(statistics.median((s.seconds - eval_s) / (s.finetune_steps * max(s.macs, 1))
                                    for s in tuned), 0.0)
    return sum(eval_s + job_steps(j, cfg) * per_mac * macs(j) for j in todo)


def format_seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.0f} min" if s < 5400 else f"{s / 3600:.1f} h"


class SampleJobs:
    """Computes one sample from its :class:`Job`, in whichever process the executor picks.

    It holds only what a worker needs (the original model as a :class:`PortableModel`, the
    data source, the config, the saved block ranking, the fine-tune function); the original
    model's Shrinker is built once per process and cached, never pickled.
    """

    def __init__(self, model: nn.Module, data: DataSource, cfg,
                 block_order: list[str] | None, finetune: FinetuneFn | None = None):
        self.original, self.data, self.cfg = PortableModel(model), data, cfg
        self.block_order = block_order
        self.finetune = finetune or partial(default_finetune, precision=cfg.precision,
                                            channels_last=cfg.channels_last)
        self._shrinker_cache: Shrinker | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_shrinker_cache": None}

    @property
    def model(self) -> nn.Module:
        return self.original.model

    @property
    def base_res(self) -> int:
        return spec_of(self.model).resolution

    @property
    def shrinker(self) -> Shrinker:
        """The original model's Shrinker (ranks the blocks if no ranking is given yet)."""
        if self._shrinker_cache is None:
            self._shrinker_cache = self._shrinker(self.model, self.base_res, self.block_order)
        return self._shrinker_cache

    def _shrinker(self, model: nn.Module, res: int, block_order=None) -> Shrinker:
        return build_shrinker(model, self.cfg, self.data, block_order=block_order,
                              block_order_criterion=self.cfg.depth_criterion)

    def _recal_loader(self, res: int) -> DataLoader:
        return self.data.loader("train", res, shuffle=True, subset=self.cfg.train_subset,
                                seed=self.cfg.seed)

    def __call__(self, job: Job, parent: PortableModel | None
                 ) -> tuple[Sample, PortableModel | PairedResult | None]:
        """The sample of ``job`` (``parent``: the fine-tuned model of the previous chain step,
        None for the original), and for chain steps the fine-tuned model the next step
        starts from; for the reference, how it and the original differ image by image."""
        t0 = time.perf_counter()
        cfg = self.cfg
        steps = 0
        # Same sample whatever ran before in this process (BN re-calibration augments with
        # the global RNG): the job, not the executor or the job order, fixes the randomness.
        torch.manual_seed(cfg.seed * 1_000_003 + zlib.crc32(job.key.encode()))
        if job.kind == "original":
            model, spec = self.model, spec_of(self.model)
        else:
            if job.kind == "reference":  # unpruned, fine-tuned as a first chain step is
                model, spec = copy.deepcopy(self.model), spec_of(self.model)
            else:
                model, spec = self._prune_job(job, parent.model if parent else self.model)
            steps = job_steps(job, cfg)
            if steps:
                loader = self.data.loader("train", spec.resolution, shuffle=True,
                                          subset=cfg.train_subset,
                                          seed=cfg.seed + len(job.key))
                self.finetune(model, loader, steps, cfg.finetune_lr, cfg.seed)
        res = spec.resolution
        # the reference is run beside the original: the drop's noise is a paired difference's
        ev = evaluate(model, self.data.loader("val", res, subset=cfg.val_subset),
                      against=self.model if job.kind == "reference" else None)
        point = spec.point
        ckpt = f"models/{job.key.replace('/', '_')}.pt" if job.kind == "chain" else None
        sample = Sample(job.key, job.kind, point["d"], point["w"], point["r"], res,
                        count_macs(model, res), count_params(model), ev.accuracy, ev.loss,
                        steps, cfg.seed, time.perf_counter() - t0, job.chain, job.step,
                        job.parent, ckpt)
        if job.kind == "reference":
            return sample, ev.paired
        if ckpt is None:
            return sample, None
        return sample, PortableModel(model.eval())  # the shrunk model carries its spec

    def _prune_job(self, job: Job, parent: nn.Module) -> tuple[nn.Module, ModelSpec]:
        d, w, r = job.point
        if job.kind == "chain":
            pspec = spec_of(parent)
            ppoint, pres = pspec.point, pspec.resolution
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
        return out.model, ModelSpec.from_dict(out.spec)
