"""Shared fixtures (tests/ and benchmarks/tests/): synthetic stand-ins written in the real
on-disk formats, tiny checkpoints, and a Ray cluster on loopback."""

from __future__ import annotations

import gzip
import os
import pickle
import socket
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)  # leave a core for background work; tests are tiny

# A pipeline small enough for tests: tiny model, synthetic data, three-step fine-tunes.
TINY = {
    "data": "synthetic", "depth_criterion": "loss", "depth_steps": [0.75, 0.5],
    "width_steps": [0.75, 0.5], "resolution_steps": [0.75, 0.5],
    "mixed_points": [[0.75, 0.75, 0.75], [0.5, 0.75, 1.0]],
    "holdout_points": [[0.75, 0.5, 0.75], [0.5, 1.0, 0.75]], "finetune_steps": 3,
    "batch_size": 32, "recal_batches": 2, "max_degree": 2, "final_epochs": 1,
    "final_subset": 64, "budget": 0.5,
}


@pytest.fixture
def tiny_options() -> dict:
    """The tiny pipeline's options (a fresh copy per test)."""
    import copy

    return copy.deepcopy(TINY)


@pytest.fixture
def macs_timing(monkeypatch):
    """``macs_timing(model)``: latency made deterministic, a model's time being its MACs over
    ``model``'s, for every timing the latency code does (the choice, the design and its
    layer table, the verdict).  Real figures come from the benchmark scripts."""
    from torch.utils.flop_counter import FlopCounterMode

    import dwrprune
    from dwrprune.cost import latency as L
    from dwrprune.search import latency as S

    def aligned_macs(module, x, align):
        """MACs of the conv and linear layers ``module(x)`` runs, those whose output
        channel count is off a multiple of ``align`` counted twice."""
        total = []

        def hook(m, inp, out):
            k = (m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
                 if isinstance(m, torch.nn.Conv2d) else m.in_features)
            c = m.out_channels if isinstance(m, torch.nn.Conv2d) else m.out_features
            total.append(out.numel() * k * (1 if c % align == 0 else 2))

        hooks = [m.register_forward_hook(hook) for m in module.modules()
                 if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        with torch.no_grad():
            module(x)
        for h in hooks:
            h.remove()
        return sum(total)

    def install(model, align: int | None = None):
        """``align``: a target whose kernels run channel counts off a multiple of ``align``
        at half speed (the "round the channels" effect)."""
        base = dwrprune.Shrinker(model).macs(1, 1, 1)

        def cost(m, x):
            if align:
                return aligned_macs(m, x, align)
            counter = FlopCounterMode(display=False)
            with counter, torch.no_grad():
                m(x)
            return counter.get_total_flops() / 2

        def measure(m, res, target, repeats=20, warmup=5, reference=None):
            ms = cost(m.eval(), torch.zeros(1, 3, res, res)) / base
            out = {"median_ms": ms, "p25_ms": ms, "p75_ms": ms}
            scaled = {k: ms * reference.ms for k in out} if reference else {}
            return out | scaled | ({"ratio": ms, "raw_median_ms": ms} if reference else {})

        def in_turns(calls, threads=1, warmup=5, repeats=20, runtime="torch"):
            return [[cost(module, x) / base] * repeats for module, x in calls]

        monkeypatch.setattr(S, "measure_ms", measure)  # the choice
        monkeypatch.setattr(L, "measure_ms", measure)  # the verdict, max-drop candidates
        monkeypatch.setattr(L, "time_in_turns", in_turns)  # the design
        monkeypatch.setattr(L, "time_layers", in_turns)  # its layer table

    return install


@pytest.fixture
def aligned_latency_model():
    """``aligned_latency_model()``: a lookup-table latency model of a target whose kernels run
    output channel counts off a multiple of 4 at half speed per channel (the "round the
    channels" effect); a layer's time is its output channels, doubled where unaligned."""
    import json

    from dwrprune.cost import latency as L

    class Aligned(L.LayerTable):
        def layer_ms(self, key):
            cout = json.loads(key)[2]
            return cout * (1.0 if cout % 4 == 0 else 2.0)

    def make():
        return L.LatencyModel(L.LatencyTarget(), [0, 1, 0, 0], 1.0, kind="lut",
                              table=Aligned(L.LatencyTarget()))

    return make


@pytest.fixture
def config_file(tmp_path):
    """``config_file(**extra)``: a YAML file of the tiny options plus ``extra``."""
    import yaml

    def write(**extra) -> str:
        p = tmp_path / "cfg.yaml"
        p.write_text(yaml.safe_dump({**TINY, **extra}))
        return str(p)

    return write


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.fixture
def fmnist_dir(tmp_path: Path) -> Path:
    """A folder holding Fashion-MNIST-format IDX files with 200 train / 50 test images."""
    rng = np.random.default_rng(0)
    root = tmp_path / "fmnist"
    root.mkdir()
    for prefix, n in (("train", 200), ("t10k", 50)):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))
    return root


def _write_cifar_batch(path: Path, n: int, label_key: bytes, k: int, rng) -> None:
    d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
         label_key: rng.integers(0, k, (n,)).tolist()}
    with open(path, "wb") as f:
        pickle.dump(d, f)


@pytest.fixture
def cifar10_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for i in range(1, 6):
        _write_cifar_batch(root / f"data_batch_{i}", 20, b"labels", 10, rng)
    _write_cifar_batch(root / "test_batch", 30, b"labels", 10, rng)
    return tmp_path  # the parent, as users usually pass it


@pytest.fixture
def cifar100_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(2)
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    _write_cifar_batch(root / "train", 100, b"fine_labels", 100, rng)
    _write_cifar_batch(root / "test", 40, b"fine_labels", 100, rng)
    return root


@pytest.fixture
def imagefolder_dir(tmp_path: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(3)
    root = tmp_path / "imgs"
    for split, n in (("train", 6), ("val", 2)):
        for cls in ("cat", "dog", "eel"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A resnet_tiny2 briefly trained on synthetic data, shared by the pipeline tests."""
    from dwrprune.cli import main

    out = tmp_path_factory.mktemp("tiny")
    assert main(["train", "--model", "resnet_tiny2", "--data", "synthetic", "--steps", "40",
                 "--lr", "0.05", "--out", str(out), "--no-progress"]) == 0
    return out / "model.pt"


# ---------------------------------------------------------------------------- Ray on loopback
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster():
    """A real single-node Ray cluster bound to 127.0.0.1, started with the ray CLI."""
    ray = pytest.importorskip("ray")
    ray_cli = str(Path(sys.executable).with_name("ray"))
    port = _free_port()
    # Loopback only, so no token authentication: once any local ray.init() on this machine
    # has created ~/.ray/auth_token, `ray start` enables it, and a driver joining by address
    # must then opt in (RAY_AUTH_MODE=token, see the README).
    saved_mode = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([ray_cli, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                    "--num-cpus=2", "--include-dashboard=false",
                    "--object-store-memory=100000000", "--disable-usage-stats"],
                   check=True, env=env, capture_output=True)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        if ray.is_initialized():
            ray.shutdown()
        subprocess.run([ray_cli, "stop", "--force"], env=env, capture_output=True)
        if saved_mode is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved_mode
