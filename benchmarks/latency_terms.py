"""Would other terms make the ONNX Runtime latency model better?  Refits the committed
design's points with alternative cost terms and prints each variant's errors; no timing.

    python benchmarks/latency_terms.py [--points benchmarks/results/latency-model/points.csv]
        [--target onnxruntime-cpu-b1-t1] [--checkpoint resnet20-fashion-mnist]

Each variant is a non-negative least-squares fit (as :mod:`dwrprune.cost.latency` fits) of
per-layer terms summed over the kept conv and linear layers, plus a constant: ``aligned`` is
the shipped kind (MACs of layers whose channel counts are multiples of 8, MACs of the
others, output elements, layers); the others round channel counts up to blocks of 4, 8 or
16 (the block of this CPU's AVX-512 kernels) or add input activations.  Columns: median
absolute error of leave-one-out refits on the fit points (what ``kind="auto"`` chooses by),
the held-out median and mean error, and the leave-one-out error over all points.  Choosing a
variant by its held-out error would tune on the held-out points: read the LOO columns.
"""

from __future__ import annotations

import argparse
import csv

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", default="benchmarks/results/latency-model/points.csv")
    ap.add_argument("--target", default="onnxruntime-cpu-b1-t1")
    ap.add_argument("--checkpoint", default="resnet20-fashion-mnist")
    args = ap.parse_args()

    import dwrprune
    from dwrprune.cost.latency import _fit, _loo_ape
    from dwrprune.cost.rounding import ALIGN

    with open(args.points, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["target"] == args.target]
    shr = dwrprune.Shrinker(dwrprune.load(dwrprune.pretrained.resolve(args.checkpoint)))
    y = np.array([float(r["median_ms"]) for r in rows])
    fit = np.array([r["use"] == "fit" for r in rows])
    layers = [shr.kept_layers(float(r["d"]), float(r["w"]), float(r["r"]))[1] for r in rows]

    def up(c, k):
        return -(-c // k) * k

    def aligned(cin, cout):
        return cin % ALIGN == 0 and cout % ALIGN == 0

    def macs(g, cin, cout):
        return g.positions * g.kernel * cin * cout / 1e6

    variants = {
        "aligned (shipped)": lambda g, i, o: [macs(g, i, o) * aligned(i, o),
                                              macs(g, i, o) * (not aligned(i, o)),
                                              g.positions * o / 1e4, 1],
        "aligned + input activations": lambda g, i, o: [
            macs(g, i, o) * aligned(i, o), macs(g, i, o) * (not aligned(i, o)),
            g.positions * o / 1e4, 1, g.positions * i / 1e4],
    }
    for k in (4, 8, 16):
        variants[f"unaligned outputs up to {k}"] = lambda g, i, o, k=k: [
            macs(g, i, o) * aligned(i, o), macs(g, i, up(o, k)) * (not aligned(i, o)),
            g.positions * o / 1e4, 1]
        variants[f"unaligned inputs up to {k}"] = lambda g, i, o, k=k: [
            macs(g, i, o) * aligned(i, o), macs(g, up(i, k), o) * (not aligned(i, o)),
            g.positions * o / 1e4, 1]
        variants[f"all channels up to {k}"] = lambda g, i, o, k=k: [
            macs(g, up(i, k), up(o, k)), g.positions * o / 1e4, 1]
    print(f"{args.target}: {int(fit.sum())} fit points, {int((~fit).sum())} held out\n")
    print("| terms | LOO median (fit) | held-out median | held-out mean | LOO median (all) |")
    print("|---|---|---|---|---|")
    for name, terms in variants.items():
        A = np.array([[1.0, *np.sum([terms(g, i, o) for g, i, o in ls], axis=0)]
                      for ls in layers])
        coef = _fit(A[fit], y[fit])
        err = np.abs(A[~fit] @ coef - y[~fit]) / y[~fit]
        print(f"| {name} | {100 * _loo_ape(A[fit], y[fit]):.1f}% | {100 * np.median(err):.1f}% "
              f"| {100 * err.mean():.1f}% | {100 * _loo_ape(A, y):.1f}% |")


if __name__ == "__main__":
    main()
