"""Does dwrprune read a user's image folder as the user reads it?  Fashion-MNIST written as a
folder of 48-px RGB PNGs (train/, val/ and test/), a CNN of the user's own trained on it with
the user's own torchvision pipeline, then the validation accuracy measured two ways:

- the user's: ``ImageFolder`` + ``Resize(side)`` + ``ToTensor`` + ``Normalize`` with the
  mean and std of all their training images;
- dwrprune's: ``DatasetSource("imagefolder", folder).loader("val", side)`` with its defaults
  (native side from the images, plain resize, mean and std from up to 2,000 training images);

at the native 48 px and at 32 px, the side a resolution cut would give (the same model, no
retraining: the question is only whether the two pipelines feed it the same images).  For
contrast, the ImageNet-style reading dwrprune used before (256/224 resize then center-crop,
ImageNet mean and std) is measured too.

    python benchmarks/imagefolder_check.py [--work /tmp/fmnist48] [--train 12000] [--epochs 8]

Resumable: the folder and the trained model are kept in ``--work``.  Writes
``benchmarks/results/imagefolder/accuracy.csv``; ``--update-docs`` puts the table in
docs/cli.md.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import dwrprune  # noqa: E402
from docs_block import update_docs  # noqa: E402
from dwrprune.training.data import FASHION_MNIST_DIR, _load_fashion_mnist  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "imagefolder" / "accuracy.csv"
SIDE = 48


class UserCNN(nn.Module):
    """A plain CNN as a user might write it (no dwrprune in it)."""

    def __init__(self, classes: int = 10):
        super().__init__()
        def stage(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))
        self.features = nn.Sequential(stage(3, 16), stage(16, 32), stage(32, 64))
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def write_folder(work: Path, n_train: int, n_val: int, n_test: int) -> Path:
    """Fashion-MNIST as 48-px RGB PNGs (a fixed, seeded subset; kept if already written)."""
    from PIL import Image

    root = work / "images"
    if (root / "done").exists():
        return root
    x, y = _load_fashion_mnist(FASHION_MNIST_DIR, True)
    xt, yt = _load_fashion_mnist(FASHION_MNIST_DIR, False)
    perm = np.random.default_rng(0).permutation(len(x))
    splits = {"train": (x, y, perm[:n_train]), "val": (x, y, perm[n_train:n_train + n_val]),
              "test": (xt, yt, np.arange(n_test))}
    for split, (xs, ys, idx) in splits.items():
        for i in idx:
            d = root / split / f"class{int(ys[i])}"
            d.mkdir(parents=True, exist_ok=True)
            img = Image.fromarray(xs[i, 0].numpy()).convert("RGB").resize((SIDE, SIDE),
                                                                          Image.BILINEAR)
            img.save(d / f"{int(i)}.png")
    (root / "done").write_text("ok\n")
    return root


def user_transform(side: int, mean, std, train: bool = False):
    from torchvision import transforms as T

    aug = [T.RandomCrop(SIDE, padding=4), T.RandomHorizontalFlip()] if train else []
    return T.Compose([*aug, T.Resize((side, side)), T.ToTensor(), T.Normalize(mean, std)])


def user_statistics(root: Path) -> tuple[list[float], list[float]]:
    """Mean and std over every training image, as a user computes them."""
    from torchvision.datasets import ImageFolder

    ds = ImageFolder(str(root / "train"), user_transform(SIDE, [0] * 3, [1] * 3))
    s = torch.zeros(3, dtype=torch.float64)
    s2 = torch.zeros(3, dtype=torch.float64)
    n = 0
    for x, _ in torch.utils.data.DataLoader(ds, batch_size=500, num_workers=2):
        s += x.double().sum((0, 2, 3))
        s2 += (x.double() ** 2).sum((0, 2, 3))
        n += x.shape[0] * x.shape[2] * x.shape[3]
    mean = s / n
    return mean.tolist(), (s2 / n - mean ** 2).sqrt().tolist()


def train_user_model(root: Path, work: Path, mean, std, epochs: int) -> nn.Module:
    """The user's own training loop (plain SGD, their own pipeline); kept in ``work``."""
    from torchvision.datasets import ImageFolder

    net = UserCNN()
    path = work / f"user_cnn-e{epochs}.pt"  # another recipe is another model
    if path.exists():
        net.load_state_dict(torch.load(path, weights_only=True))
        return net.eval()
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(
        ImageFolder(str(root / "train"), user_transform(SIDE, mean, std, train=True)),
        batch_size=128, shuffle=True, num_workers=2)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=epochs * len(loader))
    net.train()
    for epoch in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch + 1}/{epochs} done", flush=True)
    torch.save(net.state_dict(), path)
    return net.eval()


def measure(root: Path, net: nn.Module, mean, std) -> list[dict]:
    from torchvision.datasets import ImageFolder

    rows = []
    imagenet = dwrprune.DatasetSource("imagefolder", str(root), mean=[0.485, 0.456, 0.406],
                                      std=[0.229, 0.224, 0.225], resize="center-crop")
    ours_src = dwrprune.DatasetSource("imagefolder", str(root))
    info = ours_src.info
    for side in (SIDE, 32):
        theirs = dwrprune.evaluate(net, torch.utils.data.DataLoader(
            ImageFolder(str(root / "val"), user_transform(side, mean, std)),
            batch_size=256, num_workers=2)).accuracy
        ours = dwrprune.evaluate(net, ours_src.loader("val", side)).accuracy
        old = dwrprune.evaluate(net, imagenet.loader("val", side)).accuracy
        rows.append({"side": side, "user_val_acc": round(100 * theirs, 2),
                     "dwrprune_val_acc": round(100 * ours, 2),
                     "difference": round(100 * (ours - theirs), 2),
                     "imagenet_style_val_acc": round(100 * old, 2),
                     "dwrprune_native_side": info.resolution,
                     "dwrprune_mean": " ".join(f"{v:.4f}" for v in info.mean),
                     "user_mean": " ".join(f"{v:.4f}" for v in mean)})
    return rows


def markdown(rows: list[dict], n_val: int) -> str:
    lines = ["| input side | your pipeline (Resize + your mean/std) | dwrprune's default | "
             "difference | ImageNet-style reading (before) |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['side']} px | {r['user_val_acc']:.2f}% | {r['dwrprune_val_acc']:.2f}% "
                     f"| {r['difference']:+.2f} | {r['imagenet_style_val_acc']:.2f}% |")
    lines.append(f"\nValidation accuracy on {n_val:,} images.  Reproduce: `python "
                 "benchmarks/imagefolder_check.py --update-docs`.")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/fmnist48")
    ap.add_argument("--train", type=int, default=12000)
    ap.add_argument("--val", type=int, default=3000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--update-docs", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    root = write_folder(work, args.train, args.val, args.test)
    mean, std = user_statistics(root)
    net = train_user_model(root, work, mean, std, args.epochs)
    rows = measure(root, net, mean, std)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    text = markdown(rows, args.val)
    print(text)
    if args.update_docs:
        print(f"updated {update_docs('imagefolder-check', text)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
