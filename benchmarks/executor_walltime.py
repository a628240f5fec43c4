"""Wall-clock of one sample collection under the local and the Ray executor.

    python benchmarks/executor_walltime.py                    # tiny model, synthetic data
    python benchmarks/executor_walltime.py --real             # bundled ResNet-20, quick preset

Each executor collects into its own fresh folder with the same config and seeds; the script
prints both wall-clocks (Ray's includes starting a local Ray instance) and the largest
difference between the two stores' validation accuracies.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

TINY = {
    "data": "synthetic", "depth_criterion": "loss", "depth_steps": [0.75, 0.5],
    "width_steps": [0.75, 0.5], "resolution_steps": [0.75, 0.5],
    "mixed_points": [[0.75, 0.75, 0.75], [0.5, 0.75, 1.0]],
    "holdout_points": [[0.75, 0.5, 0.75], [0.5, 1.0, 0.75]], "finetune_steps": 3,
    "batch_size": 32, "recal_batches": 2,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", action="store_true", help="bundled ResNet-20, quick preset")
    ap.add_argument("--ray-cpus", type=int, default=os.cpu_count())
    ap.add_argument("--out", default=None, help="write the figures here as JSON")
    args = ap.parse_args()

    import torch

    import dwrprune
    from dwrprune.pipeline import DatasetSource, collect, resolve_config
    from dwrprune.pipeline.executors import LocalExecutor, RayExecutor

    tmp = Path(tempfile.mkdtemp(prefix="executor-walltime-"))
    if args.real:
        model = dwrprune.load(dwrprune.pretrained.resolve("resnet20-fashion-mnist"))
        cfg = resolve_config("quick")
        what = "bundled ResNet-20, quick preset"
    else:
        from dwrprune.cli import main as cli

        cli(["train", "--model", "resnet_tiny2", "--data", "synthetic", "--steps", "40",
             "--lr", "0.05", "--out", str(tmp / "tiny"), "--no-progress"])
        model = dwrprune.load(tmp / "tiny" / "model.pt")
        cfg = resolve_config(None, **TINY)
        what = "resnet_tiny2, synthetic data, 11 samples"
    data = DatasetSource.from_config(cfg)
    figures = {"what": what, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    stores = {}
    for name in ("local", "ray"):
        t0 = time.perf_counter()
        ex = LocalExecutor() if name == "local" else RayExecutor(num_cpus=args.ray_cpus)
        try:
            stores[name] = collect(model, data, cfg, tmp / name, progress=False, executor=ex)
        finally:
            ex.close()
        figures[f"{name}_seconds"] = round(time.perf_counter() - t0, 1)
    a = {s.key: s.val_acc for s in stores["local"].samples()}
    b = {s.key: s.val_acc for s in stores["ray"].samples()}
    figures["samples"] = len(a)
    figures["max_val_acc_difference"] = max(abs(a[k] - b[k]) for k in a)
    print(json.dumps(figures, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
