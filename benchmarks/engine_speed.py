"""Training speed of dwrprune's engine against a tight reference loop, on this machine.

    python benchmarks/engine_speed.py [--device cpu|cuda] [--steps 60] [--batch 128]
        [--out benchmarks/results/engine/engine_speed.csv]

Both train the bundled ResNet-20's architecture on Fashion-MNIST for the same number of
steps with the same recipe (SGD, Nesterov momentum, lr 0.1, batch 128, random crop with
4-pixel padding and horizontal flip, normalisation):

- ``dwrprune.train``: the library's loop with its own data loader (``DatasetSource``);
- ``tight loop``: the images resident on the device as one uint8 tensor, crop, flip and
  normalisation done per batch on the device, no host synchronisation until the end.

Each is timed after a few warm-up steps; rows are appended to the CSV with the machine, so
runs on other machines add rows rather than replacing them.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import dwrprune
from dwrprune.training.data import DATASETS

FIELDS = ["device", "device_name", "loop", "batch", "steps", "seconds", "steps_per_s",
          "images_per_s", "ratio_to_tight", "torch"]


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    from dwrprune.cost import machine_stamp

    return f"{machine_stamp()['cpu']}, {torch.get_num_threads()} threads"


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def tight_loop(x_u8: torch.Tensor, y: torch.Tensor, steps: int, batch: int, device: str,
               warmup: int = 5) -> float:
    """Seconds for ``steps`` steps of the reference loop (after ``warmup`` untimed ones)."""
    torch.manual_seed(0)
    model = dwrprune.create_model("resnet20", num_classes=10, in_channels=1).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    x_u8, y = x_u8.to(device), y.to(device)
    n, side, pad = len(y), x_u8.shape[-1], 4
    mean, std = 0.2860, 0.3530
    gen = torch.Generator(device=device).manual_seed(0)
    base = torch.arange(side, device=device)
    padded = F.pad(x_u8, (pad, pad, pad, pad))

    def step():
        idx = torch.randint(0, n, (batch,), device=device, generator=gen)
        oy = torch.randint(0, 2 * pad + 1, (batch, 1), device=device, generator=gen)
        ox = torch.randint(0, 2 * pad + 1, (batch, 1), device=device, generator=gen)
        rows, cols = (oy + base)[:, :, None], (ox + base)[:, None, :]
        xb = padded[idx[:, None, None], 0, rows, cols].unsqueeze(1)  # random crops
        flip = torch.rand(batch, device=device, generator=gen) < 0.5
        xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
        xb = (xb.float() / 255 - mean) / std
        loss = F.cross_entropy(model(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return time.perf_counter() - t0


def engine_loop(steps: int, batch: int, device: str, warmup: int = 5) -> float:
    """Seconds for ``steps`` steps of ``dwrprune.train`` (after ``warmup`` untimed ones)."""
    torch.manual_seed(0)
    model = dwrprune.create_model("resnet20", num_classes=10, in_channels=1)
    loader = dwrprune.DatasetSource("fashion-mnist", batch_size=batch).loader(
        "train", 28, shuffle=True)
    cfg = dwrprune.TrainConfig(steps=warmup, lr=0.1)
    dwrprune.train(model, loader, cfg, progress=False, log=False, device=device)
    _sync(device)
    t0 = time.perf_counter()
    dwrprune.train(model, loader, dwrprune.TrainConfig(steps=steps, lr=0.1), progress=False,
                   log=False, device=device)
    _sync(device)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    choices=["cpu", "cuda"])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--data-dir", default=None, help="Fashion-MNIST folder (default Debian's)")
    ap.add_argument("--out", default="benchmarks/results/engine/engine_speed.csv")
    args = ap.parse_args()
    x, y, _ = DATASETS.get("fashion-mnist")(args.data_dir, True)
    if args.data_dir:  # the engine's loader reads the same folder
        import functools

        dwrprune.DatasetSource = functools.partial(dwrprune.DatasetSource,
                                                   data_dir=args.data_dir)
    tight = tight_loop(x, y, args.steps, args.batch, args.device)
    engine = engine_loop(args.steps, args.batch, args.device)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    new = not out.exists()
    with open(out, "a", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        if new:
            w.writeheader()
        for loop, sec in (("tight loop", tight), ("dwrprune.train", engine)):
            row = {"device": args.device, "device_name": _device_name(args.device),
                   "loop": loop, "batch": args.batch, "steps": args.steps,
                   "seconds": round(sec, 3), "steps_per_s": round(args.steps / sec, 2),
                   "images_per_s": round(args.steps * args.batch / sec),
                   "ratio_to_tight": round(tight / sec, 3), "torch": torch.__version__}
            w.writerow(row)
            print(row)


if __name__ == "__main__":
    main()
