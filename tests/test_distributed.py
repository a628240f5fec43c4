"""Data-parallel training under torchrun (gloo, CPU) against a single-process run."""

import json
import os
import subprocess
import sys

import pytest
import torch

from dwrprune.cli import main
from dwrprune.training.data import ShuffleSampler


@pytest.mark.parametrize("size,shards", [(200, 2), (201, 2), (10, 3)])
def test_shards_together_are_the_single_process_batches(size, shards):
    whole = ShuffleSampler(size, seed=5)
    whole.set_epoch(3)
    order = list(whole)
    assert sorted(order) == list(range(size))
    parts = [list(whole.shard(r, shards)) for r in range(shards)]
    assert len({len(p) for p in parts}) == 1  # equal length: no rank waits on a collective
    b = 4  # per-rank batch; the global batch is b * shards
    for k in range(size // (b * shards)):
        global_batch = {i for p in parts for i in p[k * b:(k + 1) * b]}
        assert global_batch == set(order[k * b * shards:(k + 1) * b * shards])
    whole.set_epoch(4)
    assert list(whole) != order  # a new order each epoch


def _train(out, launcher):
    args = ["-m", "dwrprune", "train", "--model", "resnet_tiny", "--data", "synthetic",
            "--steps", "6", "--lr", "0.05", "--batch-size", "32", "--no-augment", "--out",
            str(out), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, *launcher, *args], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


@pytest.mark.slow
def test_torchrun_two_processes_matches_single_process(tmp_path):
    """Same global batch (2 x 16 vs 32): the batches hold the same samples, gradients are
    averaged, so the runs differ only through BatchNorm, which each rank computes over its
    own 16 samples (CPU has no SyncBatchNorm), and float summation order.  Documented
    tolerance after 6 steps at lr 0.05: losses within 5e-3, weights within 5e-2."""
    _train(tmp_path / "one", [])
    ddp = _train(tmp_path / "two", ["-m", "torch.distributed.run", "--standalone",
                                    "--nproc-per-node", "2"])
    assert ddp.count("test accuracy") == 1  # only rank 0 reports and writes
    h1 = json.loads((tmp_path / "one/history.json").read_text())[-1]
    h2 = json.loads((tmp_path / "two/history.json").read_text())[-1]
    assert h1["step"] == h2["step"] == 6
    assert abs(h1["train_loss"] - h2["train_loss"]) < 5e-3
    assert abs(h1["val_loss"] - h2["val_loss"]) < 5e-3
    card = json.loads((tmp_path / "two/card.json").read_text())
    assert card["processes"] == 2
    a = torch.load(tmp_path / "one/model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "two/model.pt", weights_only=True)["state_dict"]
    diff = max((a[k] - b[k]).abs().max().item() for k in a if a[k].is_floating_point())
    assert diff < 5e-2
    assert not (tmp_path / "two/last.pt.tmp").exists()


def test_commands_that_do_not_run_under_torchrun_say_so(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["info", "--model", "resnet_tiny", "--no-latency"]) == 2
    assert "does not run under torchrun" in capsys.readouterr().err


@pytest.mark.slow
def test_pipeline_final_finetune_under_torchrun(tmp_path, tiny_checkpoint, config_file):
    run = tmp_path / "run"
    assert main(["collect", "--checkpoint", str(tiny_checkpoint), "--config", config_file(),
                 "--out", str(run), "--no-progress"]) == 0
    assert main(["fit", "--run", str(run)]) == 0
    assert main(["plan", "--run", str(run)]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc-per-node", "2", "-m", "dwrprune", "finetune", "--run-dir",
                        str(run), "--no-progress"], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("chosen point") == 1  # rank 0 alone prints and writes
    final = json.loads((run / "final.json").read_text())
    assert final["macs"] <= 0.5 * final["original_macs"]
    meta = torch.load(run / "final/model.pt", weights_only=True)["meta"]
    assert final["test_acc"] == meta["test_acc"]  # the figure written is the saved model's
    assert (run / "final/model.pt").exists()


def test_training_device_is_this_ranks_gpu_when_there_is_one(monkeypatch):
    from dwrprune.training.engine import compute_device

    assert compute_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert compute_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert compute_device() == torch.device("cuda", 1)
