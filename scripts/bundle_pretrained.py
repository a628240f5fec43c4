"""Copy a finished `dwrprune train` run into the package as a bundled checkpoint.

    python scripts/bundle_pretrained.py RUN_DIR NAME     # e.g. runs/pretrain resnet20-fashion-mnist

Writes src/dwrprune/pretrained/NAME.pt (the run's model.pt, re-checked to load with
weights_only=True) and NAME.json: the exact training command, seed, test accuracy and the
per-epoch validation history, so the bundled weights can be reproduced.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch

import dwrprune

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    run, name = Path(sys.argv[1]), sys.argv[2]
    model_pt = run / "model.pt"
    raw = torch.load(model_pt, weights_only=True)
    card = dict(raw["meta"])
    card["history"] = [{k: round(v, 5) if isinstance(v, float) else v for k, v in h.items()}
                       for h in json.loads((run / "history.json").read_text())]
    card["spec"] = raw["spec"]
    dest = ROOT / "src" / "dwrprune" / "pretrained"
    shutil.copyfile(model_pt, dest / f"{name}.pt")
    (dest / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")
    model = dwrprune.load(dest / f"{name}.pt")
    print(f"bundled {name}: test accuracy {100 * card['test_acc']:.2f}%, "
          f"{sum(p.numel() for p in model.parameters())} parameters, "
          f"{(dest / f'{name}.pt').stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
