"""Speed of dwrprune's engine against a tight reference loop, and against the per-image data
path it replaced, on this machine.

    python benchmarks/engine_speed.py [--device cpu|cuda] [--steps 60] [--batch 128]
        [--prune quick] [--out benchmarks/results/engine/engine_speed.csv] [--update-docs]

All train the bundled ResNet-20's architecture on Fashion-MNIST with the same recipe (SGD,
Nesterov momentum, lr 0.1, batch 128, random crop with 3-pixel padding and horizontal flip,
normalisation):

- ``tight loop``: the images resident on the device as one uint8 tensor, crop, flip and
  normalisation done per batch on the device, no host synchronisation until the end;
- ``dwrprune.train``: the library's loop with its own loader (``DatasetSource``);
- ``per-image loader``: ``dwrprune.train`` fed by a torch DataLoader applying torchvision
  transforms to one image at a time (dwrprune's data path 1, before the batched one);
- ``dwrprune.train bf16``, ``channels_last``, ``bf16 + channels_last`` (and on a GPU
  ``fp16``): the precision and layout options, whose speed decides the defaults.

Evaluation (the 6,000 validation images, batch 500) and BatchNorm re-calibration (20 batches)
are timed for the batched and the per-image path, the median of ``--repeats`` interleaved
runs.  ``--prune quick`` also times ``dwrprune prune
--preset quick`` end to end (a fresh folder).  Rows are appended to the CSV with the machine
and the data path, so runs on other machines add rows rather than replacing them;
``--update-docs`` regenerates the table in docs/engine.md from the CSV (the newest row of each
machine, what, loop and data path).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

import dwrprune
from dwrprune.training.data import DATASETS
from dwrprune.training.device_data import DATA_PATH

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docs_block import update_docs  # noqa: E402

FIELDS = ["device", "device_name", "what", "loop", "batch", "steps", "seconds", "steps_per_s",
          "images_per_s", "ratio", "data_path", "torch"]
MEAN, STD = 0.2860, 0.3530


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
    n, side, pad = len(y), x_u8.shape[-1], 3
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
        xb = (xb.float() / 255 - MEAN) / STD
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


class PerImage(torch.utils.data.Dataset):
    """Data path 1: torchvision transforms applied to one uint8 image at a time."""

    def __init__(self, ds, augment: bool):
        base = ds.dataset
        self.images, self.labels, self.indices = base.images, base.labels, ds.indices
        steps = [v2.RandomCrop(28, padding=3), v2.RandomHorizontalFlip()] if augment else []
        self.tf = v2.Compose(steps + [v2.ToDtype(torch.float32, scale=True),
                                      v2.Normalize((MEAN,), (STD,))])

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        j = self.indices[i]
        return self.tf(self.images[j]), int(self.labels[j])


def loaders(batch: int, per_image: bool, split: str, shuffle: bool):
    ds = dwrprune.create_dataset("fashion-mnist", split)
    if not per_image:
        return dwrprune.make_loader(ds, batch, shuffle=shuffle)
    return torch.utils.data.DataLoader(PerImage(ds, augment=split == "train"), batch,
                                       shuffle=shuffle)


def engine_loop(loader, steps: int, device: str, warmup: int = 5, **options) -> float:
    """Seconds for ``steps`` steps of ``dwrprune.train`` (after ``warmup`` untimed ones);
    ``options``: TrainConfig's precision (default here fp32, as the tight loop) and
    channels_last."""
    options = {"precision": "fp32", **options}
    torch.manual_seed(0)
    model = dwrprune.create_model("resnet20", num_classes=10, in_channels=1)
    dwrprune.train(model, loader, dwrprune.TrainConfig(steps=warmup, lr=0.1, **options),
                   progress=False, log=False, device=device)
    _sync(device)
    t0 = time.perf_counter()
    dwrprune.train(model, loader, dwrprune.TrainConfig(steps=steps, lr=0.1, **options),
                   progress=False, log=False, device=device)
    _sync(device)
    return time.perf_counter() - t0


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def prune_seconds(preset: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        return timed(lambda: subprocess.run(
            ["dwrprune", "prune", "--preset", preset, "--out", f"{tmp}/run", "--no-progress"],
            check=True, stdout=subprocess.DEVNULL))


def measure(args) -> list[dict]:
    device, batch, steps = args.device, args.batch, args.steps
    x, y, _ = DATASETS.get("fashion-mnist")(None, True)
    rows = []

    def row(what, loop, sec, n_steps, ref, size=batch):
        rows.append({"what": what, "loop": loop, "batch": size, "steps": n_steps,
                     "seconds": round(sec, 3), "steps_per_s": round(n_steps / sec, 2),
                     "images_per_s": round(n_steps * size / sec), "ratio": round(ref / sec, 3)})

    tight = tight_loop(x, y, steps, batch, device)
    row("train", "tight loop", tight, steps, tight)
    for per_image, name in ((False, "dwrprune.train"), (True, "per-image loader")):
        sec = engine_loop(loaders(batch, per_image, "train", True), steps, device)
        row("train", name, sec, steps, tight)
    variants = [("bf16", {"precision": "bf16"}), ("channels_last", {"channels_last": True}),
                ("bf16 + channels_last", {"precision": "bf16", "channels_last": True})]
    if device == "cuda":
        variants += [("fp16", {"precision": "fp16"})]
    for label, options in variants:
        sec = engine_loop(loaders(batch, False, "train", True), steps, device, **options)
        row("train", f"dwrprune.train {label}", sec, steps, tight)
    model = dwrprune.load(dwrprune.pretrained.path())
    evals: dict[bool, list[float]] = {False: [], True: []}
    recals: dict[bool, list[float]] = {False: [], True: []}
    val = {p: loaders(500, p, "val", False) for p in (False, True)}
    tr = {p: loaders(batch, p, "train", True) for p in (False, True)}
    for p in (False, True):
        dwrprune.evaluate(model, val[p], device=device, max_batches=1)  # warm
    for _ in range(args.repeats):  # interleaved, so a slow moment hits both paths alike
        for p in (False, True):
            evals[p].append(timed(lambda: dwrprune.evaluate(model, val[p], device=device)))
            recals[p].append(timed(lambda: dwrprune.recalibrate_batchnorm(
                model, tr[p], 20, device=device)))
    evals = {p: statistics.median(v) for p, v in evals.items()}
    recals = {p: statistics.median(v) for p, v in recals.items()}
    n_val = len(dwrprune.create_dataset("fashion-mnist", "val"))
    for per_image, name in ((False, "batched (dwrprune)"), (True, "per-image loader")):
        row("evaluate", name, evals[per_image], n_val // 500, evals[False], 500)
        row("bn-recalibrate", name, recals[per_image], 20, recals[False])
    if args.prune:
        sec = prune_seconds(args.prune)
        rows.append({"what": f"prune --preset {args.prune}", "loop": "dwrprune prune",
                     "seconds": round(sec, 1)})
    stamp = {"device": device, "device_name": _device_name(device), "data_path": DATA_PATH,
             "torch": torch.__version__}
    return [stamp | r for r in rows]


def latest(rows: list[dict]) -> list[dict]:
    """The newest row of each (machine, what, loop, data path), in first-seen order: a run
    again on the same machine replaces its figures in the table (the CSV keeps them all)."""
    last: dict[tuple, dict] = {}
    for r in rows:
        last[(r["device_name"], r["what"], r["loop"], r["data_path"])] = r
    return list(last.values())


def markdown(rows: list[dict]) -> str:
    out = ["| machine | what | loop | steps/s | images/s | seconds | vs reference |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{float(r['ratio']):.2f}x" if r.get("ratio") else ""
        out.append(f"| {r['device_name']} | {r['what']} | {r['loop']} | "
                   f"{r.get('steps_per_s') or ''} | {r.get('images_per_s') or ''} | "
                   f"{r['seconds']} | {ratio} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    choices=["cpu", "cuda"])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3,
                    help="evaluation and re-calibration: the median of this many runs")
    ap.add_argument("--prune", choices=["quick", "full"], default=None,
                    help="also time `dwrprune prune --preset ...` end to end")
    ap.add_argument("--out", default="benchmarks/results/engine/engine_speed.csv")
    ap.add_argument("--update-docs", action="store_true")
    ap.add_argument("--render-only", action="store_true", help="only regenerate the table")
    args = ap.parse_args()
    out = Path(args.out)
    if not args.render_only:
        rows = measure(args)
        out.parent.mkdir(parents=True, exist_ok=True)
        new = not out.exists()
        with open(out, "a", newline="") as f:
            w = csv.DictWriter(f, FIELDS)
            if new:
                w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k, "") for k in FIELDS})
                print(r)
    with open(out, newline="") as f:
        text = markdown(latest([r for r in csv.DictReader(f) if r.get("data_path")]))
    print(text)
    if args.update_docs:
        print(f"updated {update_docs('engine-speed', text)}")


if __name__ == "__main__":
    main()
