"""Does a training precision or memory layout cost accuracy?  The comparison's fine-tune
recipe run under each, on the bundled ResNet-20 pruned to half its MACs.

    python benchmarks/precision_check.py [--seeds 0,1] [--variants fp32,bf16,...]
        [--out benchmarks/results/engine/precision.csv] [--update-docs]

The model is pruned by uniform width to 0.72 (half the MACs, L1 channel ranking, BatchNorm
re-calibrated), then fine-tuned 3 epochs at lr 0.02 on the training split with
``dwrprune.train`` under each variant; validation accuracy (6,000 images, one standard
deviation about 0.33 points) decides, the test accuracy is reported.  Rows are appended as each
run finishes; running the same command again skips the (variant, seed) pairs already in the
CSV.  Seconds are wall time on the machine as it was (other work may have shared it): read
speed from ``engine_speed.py``.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch

import dwrprune
from dwrprune.training.device_data import DATA_PATH

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docs_block import update_docs  # noqa: E402

VARIANTS = {"fp32": {"precision": "fp32"}, "bf16": {"precision": "bf16"},
            "channels_last": {"precision": "fp32", "channels_last": True},
            "bf16+channels_last": {"precision": "bf16", "channels_last": True}}
FIELDS = ["variant", "seed", "val_acc", "test_acc", "seconds", "device", "data_path", "torch"]


def run_one(options: dict, seed: int, device: str) -> dict:
    data = dwrprune.DatasetSource("fashion-mnist")
    model = dwrprune.load(dwrprune.pretrained.path())
    torch.manual_seed(seed)
    pruned = dwrprune.shrink(model, 1.0, 0.72, 1.0, recalibrate=data.loader(
        "train", 28, shuffle=True, seed=seed), recal_batches=20).model
    t0 = time.perf_counter()
    dwrprune.train(pruned, data.loader("train", 28, shuffle=True, seed=seed),
                   dwrprune.TrainConfig(epochs=3, lr=0.02, seed=seed, **options),
                   progress=False, log=False, device=device)
    seconds = time.perf_counter() - t0
    val = dwrprune.evaluate(pruned, data.loader("val", 28), device=device).accuracy
    test = dwrprune.evaluate(pruned, data.loader("test", 28), device=device).accuracy
    return {"val_acc": round(100 * val, 2), "test_acc": round(100 * test, 2),
            "seconds": round(seconds, 1)}


def markdown(rows: list[dict]) -> str:
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["variant"], []).append(r)
    out = ["| variant | seeds | validation % (each seed) | mean | test % (each seed) | mean "
           "| fine-tune seconds (each seed) |", "|---|---|---|---|---|---|---|"]
    for name, rs in by.items():
        rs = sorted(rs, key=lambda r: int(r["seed"]))

        def each(k, fmt="{:.2f}"):
            return ", ".join(fmt.format(float(r[k])) for r in rs)

        def mean(k):
            return sum(float(r[k]) for r in rs) / len(rs)
        out.append(f"| {name} | {','.join(r['seed'] for r in rs)} | {each('val_acc')} | "
                   f"{mean('val_acc'):.2f} | {each('test_acc')} | {mean('test_acc'):.2f} | "
                   f"{each('seconds', '{:.0f}')} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="benchmarks/results/engine/precision.csv")
    ap.add_argument("--update-docs", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.exists():
        with open(out, newline="") as f:
            done = {(r["variant"], r["seed"], r["device"]) for r in csv.DictReader(f)}
    for seed in (int(s) for s in args.seeds.split(",")):
        for name in args.variants.split(","):
            if name not in VARIANTS:
                sys.exit(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
            if (name, str(seed), args.device) in done:
                continue
            row = {"variant": name, "seed": seed, "device": args.device,
                   "data_path": DATA_PATH, "torch": torch.__version__,
                   **run_one(VARIANTS[name], seed, args.device)}
            new = not out.exists()
            with open(out, "a", newline="") as f:
                w = csv.DictWriter(f, FIELDS)
                if new:
                    w.writeheader()
                w.writerow(row)
            print(row, flush=True)
    with open(out, newline="") as f:
        text = markdown(list(csv.DictReader(f)))
    print(text)
    if args.update_docs:
        print(f"updated {update_docs('precision-check', text)}")


if __name__ == "__main__":
    main()
