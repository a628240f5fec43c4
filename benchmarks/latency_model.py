"""How well the latency model predicts measured latency, per target (run on a quiet machine).

    python benchmarks/latency_model.py [--checkpoint resnet20-fashion-mnist]
        [--targets cpu-b1,cpu-b64,ort-b1] [--threads 1] [--fit 16] [--heldout 12] [--seed 0]
        [--out benchmarks/results/latency-model] [--update-docs]

For each target (PyTorch on the CPU at batch 1 and 64, ONNX Runtime at batch 1): measure the
original and ``fit + heldout`` shrunk models spread over the (d, w, r) box (Latin
hypercube), fit every kind of latency model (whole-network totals, the same with channels
counted in blocks of 8, per-layer lookup table) on the first ``fit``, and report each one's
leave-one-out error on the fit points (what ``kind="auto"`` chooses by) and its error on the
held-out ones.  Writes OUT/points.csv (every measured point, with every model's values) and
OUT/table.md.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="resnet20-fashion-mnist")
    ap.add_argument("--targets", default="cpu-b1,cpu-b64,ort-b1")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fit", type=int, default=16)
    ap.add_argument("--heldout", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0, help="seed of the design's points")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "latency-model"))
    ap.add_argument("--update-docs", action="store_true")
    args = ap.parse_args()

    import dwrprune
    from dwrprune.cost import machine_stamp
    from dwrprune.cost.latency import FEATURES, LatencyTarget, fit_latency_model, measure_design

    model = dwrprune.load(dwrprune.pretrained.resolve(args.checkpoint))
    shr = dwrprune.Shrinker(model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    lines = ["| target | latency model | original (ms) | fit points | held-out points | "
             "LOO median error (fit points) | held-out median error | held-out mean error | "
             "worst | kept by auto |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name in args.targets.split(","):
        target = LatencyTarget.parse(name, args.threads).check()
        design = measure_design(shr, target, args.fit, args.heldout, repeats=args.repeats,
                                seed=args.seed, progress=print)
        models = {k: fit_latency_model(shr, target, design, k) for k in FEATURES}
        kept = min(models, key=lambda k: models[k].errors[k]["loo_median_ape"])
        for p in design:
            rows.append({"target": target.key(), **{k: p[k] for k in (
                "d", "w", "r", "resolution", "macs", "activations", "weights", "layers",
                "median_ms", "p25_ms", "p75_ms", "use")},
                **{f"modelled_ms_{k}": lm(shr, p["d"], p["w"], p["r"])
                   for k, lm in models.items()}})
        for k, lm in models.items():
            e = lm.errors[k]
            lines.append(f"| {target.key()} | {k} | {lm.original_ms:.2f} | {args.fit} | "
                         f"{args.heldout} | {100 * e['loo_median_ape']:.1f}% | "
                         f"{100 * e['heldout_median_ape']:.1f}% | "
                         f"{100 * e['heldout_mape']:.1f}% | "
                         f"{100 * e['heldout_worst_ape']:.1f}% | "
                         f"{'yes' if k == kept else ''} |")
    stamp = machine_stamp()
    import onnxruntime

    lines.append(f"\nMeasured with torch {stamp['torch']} and onnxruntime "
                 f"{onnxruntime.__version__} on {stamp['cpu']}, {args.threads} thread(s), "
                 f"median of {args.repeats} runs per point.")
    with open(out / "points.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    text = "\n".join(lines)
    (out / "table.md").write_text(text + "\n")
    print(text)
    if args.update_docs:
        from docs_block import update_docs

        update_docs("latency-model-table", text)


if __name__ == "__main__":
    main()
