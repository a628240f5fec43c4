"""Stage 1: collect (d, w, r, accuracy) samples into a run folder's store, resumably.

The :class:`Collector` plans the jobs (:mod:`.jobs`), hands them to an executor (chain steps
after their parent) and writes each finished sample, and its chain model, as it arrives.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from torch import nn
from tqdm.auto import tqdm

from ..checkpoint import load, save_model
from ..errors import DwrpruneError
from ..io.spec import spec_of
from ..io.store import Sample, SampleStore
from ..training.device_data import DATA_PATH
from ..training.engine import PairedResult
from .config import PipelineConfig
from .data import DataSource, FinetuneFn, check_source
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
from .jobs import (
    Job,
    SampleJobs,
    describe_jobs,
    estimate_seconds,
    format_seconds,
    model_fingerprint,
    plan_jobs,
)
from .run import Run


class Collector:
    """Drives a collection against a run folder: plans the jobs, hands them to an executor
    (chain steps after their parent), and writes each finished sample (and chain model) to
    the run folder as it arrives; resumable at job granularity."""

    def __init__(self, model: nn.Module, data: DataSource, cfg: PipelineConfig,
                 run_dir: str | Path, finetune: FinetuneFn | None = None,
                 progress: bool = True):
        self.model, self.data, self.cfg = model.eval(), data, cfg
        self.run = Run(run_dir)
        self.progress = progress
        spec = spec_of(model)
        if spec.pruned:
            raise DwrpruneError("collect samples from the original (unpruned) model")
        self.base_res = spec.resolution
        check_source(data, spec)
        self.store = SampleStore(self.run.path / "samples.sqlite")
        self.store.bind(cfg.collect_config(), model_fingerprint(model),
                        PipelineConfig.collect_defaults())
        self.store.set_meta("val_images", len(data.loader("val", self.base_res,
                                                          subset=cfg.val_subset).dataset))
        self.runner = SampleJobs(model, data, cfg, self._saved_order(), finetune)
        self.shrinker = self.runner.shrinker
        self.store.set_meta("axes", self.shrinker.axes())  # the report says what was there
        self._save_order()
        self.jobs = plan_jobs(cfg, len(self.shrinker.blocks), self.base_res,
                              self.shrinker.min_resolution)
        self.store.set_meta("planned", [j.key for j in self.jobs])  # fit says what is missing

    def _saved_order(self):
        return self.run.block_ranking()[0]

    def _save_order(self) -> None:
        order = [b.name for b in self.shrinker.block_order()]
        if self._saved_order() is None:
            self.run.save_block_ranking(order, self.cfg.depth_criterion,
                                        getattr(self.shrinker, "block_scores", {}))
        self.runner.block_order = order  # workers rebuild the shrinker with this ranking

    def _parent(self, job: Job) -> PortableModel | None:
        if job.kind != "chain" or job.parent == "orig":
            return None
        path = self.run.path / self.store.get(job.parent).checkpoint
        if not path.exists():
            raise DwrpruneError(
                f"chain model {path} of finished sample {job.parent!r} is missing, so "
                f"chain {job.chain!r} cannot continue; restore the file, or start "
                "the collection in a new --out folder")
        return PortableModel(load(path, check_input=False))

    def _write(self, sample: Sample, model: PortableModel | PairedResult | None) -> None:
        """Model first, then the sample row: a row in the store means its file exists (and
        the reference's paired counts, which the drop's noise is computed from)."""
        if isinstance(model, PairedResult):
            self.store.set_meta("reference_paired", asdict(model))
        elif model is not None:
            save_model(self.run.path / sample.checkpoint, model.model, model.model.dwrprune_spec,
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
        todo = [j for j in self.jobs if j.key not in finished]
        if not todo:
            return self.store
        self.store.bind_data_path(DATA_PATH, bool(finished))
        tqdm.write(f"[collect] {describe_jobs(self.jobs, self.cfg)}"
                   + (f"; {len(finished)} already measured" if finished else ""))
        bar = tqdm(total=len(self.jobs), initial=len(finished), desc="collect", unit="sample",
                   disable=not self.progress)
        said = [False]

        def estimate() -> None:  # once, as soon as a fine-tuned sample has been timed
            left = [j for j in todo if not self.store.has(j.key)]
            est = estimate_seconds(left, self.store.samples(), self.cfg,
                                   lambda j: self.shrinker.macs(*j.point))
            if est is not None and left and not said[0]:
                said[0] = True
                bar.write(f"[collect] estimated {format_seconds(est)} for the remaining "
                          f"{len(left)} samples, one after another (from the samples "
                          "measured so far)")

        estimate()

        def node(job: Job) -> Node:
            def done(result):
                sample, model = result
                self._write(sample, model)
                bar.update(1)
                bar.write(f"[collect] {job.key:8s} d={sample.d:.3f} w={sample.w:.3f} "
                          f"r={sample.r:.3f} MACs={sample.macs / 1e6:.2f}M "
                          f"val_acc={sample.val_acc * 100:.2f}% ({sample.seconds:.0f}s)")
                estimate()

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
    :mod:`dwrprune.pipeline.executors`)."""
    with Run(run_dir).lock(wait_for_lock, on_wait=tqdm.write):
        collector = Collector(model, data, config, run_dir, finetune, progress)
        own = executor is None
        if own:
            executor = create_executor(config.executor, config.ray_address, config.retries,
                                       jobs=config.jobs)
        try:
            return collector.run_all(executor, Resources(config.job_cpus, config.job_gpus),
                                     wait_for_lock)
        finally:
            if own:
                executor.close()
