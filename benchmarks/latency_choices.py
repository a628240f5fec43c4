"""What each run folder's predictor, and its polynomial candidates, would choose under latency
budgets, with no timing: the latency model is fitted to a committed, measured design.

    python benchmarks/latency_choices.py --run RUN [--run RUN2 ...] [--budgets 0.5,0.7]
        [--design benchmarks/results/latency-model/points.csv] [--target cpu-b1-t1]
        [--kind features]

For every run folder: the block ranking, the options and the bundled checkpoint it names
build the shrinker; the latency model of ``--kind`` is fitted to the design's fit points for
``--target`` (`benchmarks/latency_model.py` measured them); then :func:`solve_latency` gives
the best point under each budget (a fraction of the design's original latency) for the run's
own predictor, for the polynomial fit of its one-axis chains (`families: separable, cp,
full`) and for the degree-1 polynomial (`max_degree: 1`).  Only the
model's choice: `compare.py` measures the choice and steps it to the real budget, so on
another day's timings it can land elsewhere.  Prints one line per (run, predictor).
"""

from __future__ import annotations

import argparse
import csv
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    from dwrprune.checkpoint import load
    from dwrprune.cost.latency import LatencyTarget, fit_latency_model
    from dwrprune.pipeline import Run, fit_samples, run_shrinker
    from dwrprune.pretrained import resolve
    from dwrprune.search.latency import solve_latency
    from dwrprune.search.predictor import POLYNOMIALS
    from dwrprune.search.solver import search_box

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, help="pipeline run folder")
    ap.add_argument("--budgets", type=lambda s: [float(x) for x in s.split(",")],
                    default=[0.5, 0.7])
    ap.add_argument("--design", default=str(ROOT / "benchmarks" / "results" / "latency-model"
                                            / "points.csv"))
    ap.add_argument("--target", default="cpu-b1-t1")
    ap.add_argument("--kind", default="features", choices=("features", "lut"))
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message="accuracy predictor")
    with open(args.design, newline="") as f:
        design = [{**r, **{k: float(r[k]) for k in ("d", "w", "r", "median_ms")}}
                  for r in csv.DictReader(f) if r["target"] == args.target]
    target = LatencyTarget.from_key(args.target)
    for rd in args.run:
        run = Run(rd)
        cfg, checkpoint = run.load_config()
        shr = run_shrinker(run, load(resolve(checkpoint)), cfg)
        lat = fit_latency_model(shr, target, design, args.kind)
        poly = cfg.replace(families=list(POLYNOMIALS), fit_mixed=False)
        preds = {"run's predictor": run.predictor()[0],
                 "polynomial": fit_samples(run.store(), poly)[0],
                 "linear": fit_samples(run.store(), poly.replace(max_degree=1))[0]}
        for name, pred in preds.items():
            lo = search_box(cfg.lower_bounds, pred, shr)  # as compare.py's 3d-latency
            out = []
            for b in args.budgets:
                c = solve_latency(pred, shr, lat, b * lat.original_ms, lo)["best"]
                out.append(f"{b:g}: d={c['d']:.3f} w={c['w']:.3f} r={c['r']:.3f} "
                           f"(predicted {100 * c['predicted']:.2f})")
            print(f"{Path(rd).name} | {name} | " + " | ".join(out))


if __name__ == "__main__":
    main()
