"""Render the pipeline results table (docs/results.md) from finished run folders.

    python benchmarks/pipeline_table.py RUN [RUN ...] [--update-docs]

Each row comes from a run folder's final.json, predictor.json and config.yaml: the chosen
point, exact MACs, parameters, CPU latency (batch 1 and 64, 1 thread), test accuracy of the
original and the pruned model, the predictor's leave-one-out and held-out errors, and the
collection's wall-clock.  With --update-docs the table replaces the block between
<!-- pipeline-table --> markers in docs/results.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def row(run: Path) -> str:
    final = json.loads((run / "final.json").read_text())
    pred = json.loads((run / "predictor.json").read_text())
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    report = json.loads((run / "report" / "report.json").read_text())
    p, h = pred["predictor"], pred.get("holdout") or {}
    pt = final["point"]
    hold = f"{100 * h['mae']:.2f} ({h['count']})" if h.get("count") else "-"
    return (f"| {run.name} | {cfg['budget']:g} | {pt['d']:.2f} / {pt['w']:.2f} / "
            f"{pt['r']:.2f} ({pt['resolution']}px) | "
            f"{final['original_macs'] / 1e6:.2f} -> {final['macs'] / 1e6:.2f} "
            f"({100 * final['macs_ratio']:.1f}%) | "
            f"{final['original_params'] / 1e3:.0f}K -> {final['params'] / 1e3:.0f}K | "
            f"{final['original_latency_ms']['1']:.2f} -> {final['latency_ms']['1']:.2f} | "
            f"{final['original_latency_ms']['64']:.1f} -> {final['latency_ms']['64']:.1f} | "
            f"{100 * final['original_test_acc']:.2f} -> {100 * final['test_acc']:.2f} | "
            f"{p['name']}: {100 * p['loo_rmse']:.2f} | {hold} | "
            f"{report['collection_seconds'] / 60:.0f} |")


HEADER = ("| run | budget | d / w / r | MACs (M) | params | latency b1 (ms) | "
          "latency b64 (ms) | test acc (%) | predictor: LOO RMSE (pts) | "
          "held-out MAE (pts, n) | collection (min) |\n" + "|---" * 11 + "|")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--update-docs", action="store_true")
    args = ap.parse_args()
    table = HEADER + "\n" + "\n".join(row(r) for r in args.runs)
    print(table)
    if args.update_docs:
        from docs_block import update_docs

        update_docs("pipeline-table", table)


if __name__ == "__main__":
    main()
