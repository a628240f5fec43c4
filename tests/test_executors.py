"""Executors: the job graph on the local executor, and a real Ray cluster on loopback."""

import os
import pickle
import signal
import sys
import time
from pathlib import Path

import pytest
import ray
import torch

from dwrprune import DwrpruneError, create_model, load
from dwrprune.cli import main
from dwrprune.io.spec import make_spec
from dwrprune.io.store import SampleStore
from dwrprune.pipeline import DatasetSource, PipelineConfig, collect, default_finetune
from dwrprune.pipeline.executors import (
    LocalExecutor,
    Node,
    PortableModel,
    RayExecutor,
    check_portable,
    create_executor,
    run_graph,
)

# Functions of this module run inside Ray workers, which cannot import it by name.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


# ---------------------------------------------------------------------------- job graph
def _nodes(log, fail=()):
    def job(key):
        if key in fail:
            raise RuntimeError(f"boom in {key}")
        return key.upper()

    def node(key, after=None):
        return Node(key, lambda: (job, (key,)), lambda r: log.append(r), after)

    return [node("a"), node("b", "a"), node("c", "b"), node("x")]


def test_graph_runs_dependents_after_their_parent():
    log = []
    assert run_graph(_nodes(log), LocalExecutor()) == []
    assert log.index("A") < log.index("B") < log.index("C") and "X" in log


def test_graph_skips_finished_and_reports_failures_with_their_dependents():
    log = []
    failures = run_graph(_nodes(log, fail={"b"}), LocalExecutor(), finished={"a"})
    assert log == ["X"]  # a was finished before; b failed; c needs b
    assert [(f.key, f.error.split(":")[0]) for f in failures] == [
        ("b", "RuntimeError"), ("c", "not run")]
    assert "boom in b" in failures[0].error


def test_graph_refuses_unknown_prerequisite():
    with pytest.raises(ValueError, match="unknown job"):
        run_graph([Node("a", lambda: (print, ()), print, after="zz")], LocalExecutor())


def test_portable_model_pickles_as_a_checkpoint_not_code():
    m = create_model("resnet_tiny", num_classes=10, in_channels=1)
    m.dwrprune_spec = make_spec("resnet_tiny", 10, 1, 16)
    blob = pickle.dumps(PortableModel(m.eval()))
    assert b"CifarResNet" not in blob  # no class reference, only tensors and the spec
    back = pickle.loads(blob).model
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(back(x), m(x)) and not back.training


def test_unportable_model_is_refused_up_front():
    class Mine(torch.nn.Module):
        pass

    m = Mine()
    m.dwrprune_spec = make_spec("no-such-model", 10, 1, 16)
    with pytest.raises(DwrpruneError, match="cannot be rebuilt|cannot be sent"):
        check_portable(m)


def test_executor_choice_errors():
    with pytest.raises(DwrpruneError, match="available: local, pool, ray"):
        create_executor("dask")
    with pytest.raises(DwrpruneError, match="needs --executor ray"):
        create_executor("local", address="127.0.0.1:1")
    with pytest.raises(DwrpruneError, match="executor must be"):
        PipelineConfig.from_dict({"executor": "spark"})


def _samples(run):
    return {s.key: s for s in SampleStore(run / "samples.sqlite").samples()}


@pytest.mark.slow
def test_ray_collection_matches_local(tmp_path, tiny_checkpoint, ray_cluster, config_file):
    cfg = config_file()
    common = ["collect", "--checkpoint", str(tiny_checkpoint), "--config", cfg, "--no-progress"]
    t0 = time.perf_counter()
    assert main([*common, "--out", str(tmp_path / "local")]) == 0
    t_local = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert main([*common, "--out", str(tmp_path / "ray"), "--executor", "ray",
                 "--ray-address", ray_cluster]) == 0
    t_ray = time.perf_counter() - t0
    print(f"tiny collection: local {t_local:.1f}s, ray {t_ray:.1f}s")
    local, remote = _samples(tmp_path / "local"), _samples(tmp_path / "ray")
    assert sorted(local) == sorted(remote) and len(local) == 11
    for k, a in local.items():
        b = remote[k]
        assert (a.d, a.w, a.r, a.resolution, a.macs, a.params) == (
            b.d, b.w, b.r, b.resolution, b.macs, b.params), k
        assert abs(a.val_acc - b.val_acc) < 1e-6 and abs(a.val_loss - b.val_loss) < 1e-4, k
    for s in remote.values():  # chain models were written by the driver, loadable
        if s.checkpoint:
            assert load(tmp_path / "ray" / s.checkpoint).dwrprune_spec["arch"]


@pytest.mark.slow
def test_jobs_side_by_side_give_the_serial_rows(tmp_path, tiny_checkpoint, config_file):
    """--jobs 2: the pool of worker processes writes the rows a serial collection writes."""
    common = ["collect", "--checkpoint", str(tiny_checkpoint), "--config", config_file(),
              "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "serial")]) == 0
    assert main([*common, "--out", str(tmp_path / "pool"), "--jobs", "2"]) == 0
    serial, pool = _samples(tmp_path / "serial"), _samples(tmp_path / "pool")
    assert sorted(serial) == sorted(pool) and len(serial) == 11
    for k, a in serial.items():
        b = pool[k]
        assert (a.d, a.w, a.r, a.resolution, a.macs) == (b.d, b.w, b.r, b.resolution, b.macs)
        assert abs(a.val_acc - b.val_acc) < 1e-6 and abs(a.val_loss - b.val_loss) < 1e-4, k


class _KillWorkerOnce:
    """A fine-tune that SIGKILLs its own worker process the first time it is called."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __call__(self, model, loader, steps, lr, seed):
        if not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        default_finetune(model, loader, steps, lr, seed)


class _FailWidthChain:
    """A fine-tune that always raises on the first width-chain step."""

    def __call__(self, model, loader, steps, lr, seed):
        p = model.dwrprune_spec["arch"]["point"]
        if (p["d"], p["r"]) == (1.0, 1.0) and p["w"] == 0.75:
            raise RuntimeError("simulated bad job")
        default_finetune(model, loader, steps, lr, seed)


@pytest.fixture
def tiny_cfg(tiny_options):
    return PipelineConfig.from_dict({**tiny_options, "holdout_points": []})


@pytest.mark.slow
def test_killed_worker_is_retried_and_the_run_completes(tmp_path, tiny_checkpoint, ray_cluster,
                                                        tiny_cfg):
    marker = tmp_path / "killed"
    ex = RayExecutor(ray_cluster, retries=2)
    try:
        store = collect(load(tiny_checkpoint), DatasetSource("synthetic", batch_size=32),
                        tiny_cfg, tmp_path / "run", finetune=_KillWorkerOnce(marker),
                        progress=False, executor=ex)
    finally:
        ex.close()
    assert marker.exists()  # a worker really died mid-job
    assert len(store.samples()) == 9  # orig + 2 d + 2 w + 2 r + 2 mixed


@pytest.mark.slow
def test_failing_job_is_reported_and_the_rest_kept(tmp_path, tiny_checkpoint, ray_cluster,
                                                   tiny_cfg):
    ex = RayExecutor(ray_cluster, retries=1)
    try:
        with pytest.raises(DwrpruneError, match=r"2 sample jobs failed.*w/0: RuntimeError: "
                                                r"simulated bad job.*w/1: not run"):
            collect(load(tiny_checkpoint), DatasetSource("synthetic", batch_size=32),
                    tiny_cfg, tmp_path / "run", finetune=_FailWidthChain(), progress=False,
                    executor=ex)
    finally:
        ex.close()
    kept = _samples(tmp_path / "run")
    assert sorted(kept) == ["d/0", "d/1", "mix/0", "mix/1", "orig", "r/0", "r/1"]
