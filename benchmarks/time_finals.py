"""Time the final models of ``prune`` run folders beside their original, again.

A run's report times its final model once, at the end of its fine-tune, and a shared host's
speed drifts: this script times each final in turn with the original (round-robin, median
of ``--repeats`` rounds), ``--rounds`` times per target, so that a report's figure can be
checked in a quiet moment.  Writes ``finals.csv`` and ``table.md`` to ``--out``.

    P=benchmarks/results/pipeline/mobilenetv2-fmnist-full
    python benchmarks/time_finals.py --checkpoint mobilenetv2-fashion-mnist \\
        --runs $P-lat-cpu,$P,$P-lat-ort \\
        --targets cpu-b1,ort-b1 --out benchmarks/results/finals-mobilenetv2 [--update-docs]

Timing only: no training, no data.  ``--render``: measure nothing, rebuild table.md (and
the docs block with ``--update-docs``) from the CSV.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from docs_block import add_output_args, read_rows, write_rows, write_table

FIELDS = ["run", "target", "round", "resolution", "original_ms", "final_ms", "ratio",
          "speedup", "repeats", "machine"]


def table(rows: list[dict]) -> str:
    """One line per (run, target): the ratio of the final's latency to the original's in
    each round, and the median over rounds.  ``rows``: finals.csv's (strings) or the
    measuring loop's."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for x in rows:
        groups.setdefault((x["run"], x["target"]), []).append(x)
    lines = ["| run | target | final / original, each round | median | speed-up |",
             "|---|---|---|---|---|"]
    for (run, target), xs in groups.items():
        ratios = [float(x["ratio"]) for x in xs]
        med = statistics.median(ratios)
        cells = ", ".join(f"{r:.3f} ({float(x['final_ms']):.2f} / "
                          f"{float(x['original_ms']):.2f} ms)" for r, x in zip(ratios, xs))
        lines.append(f"| {Path(run).name} | {target} | {cells} | {med:.3f} | "
                     f"{1 / med:.2f}x |")
    first = rows[0] if rows else {}
    return "\n".join(lines) + (
        f"\n\nMeasured on {first.get('machine')}; each round is the median of "
        f"{first.get('repeats')} passes of each model, timed in turns."
        if rows else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="the original (path or bundled name)")
    ap.add_argument("--runs", default="", help="comma-separated run folders with final/")
    ap.add_argument("--targets", default="cpu-b1")
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    add_output_args(ap, "finals.csv")
    args = ap.parse_args()
    if args.render:
        write_table(args, table(read_rows(args.out, "finals.csv")))
        return
    runs = [r for r in args.runs.split(",") if r]
    if not runs or not args.checkpoint:
        ap.error("--runs and --checkpoint are required (unless --render)")

    import dwrprune
    from dwrprune.cost.latency import LatencyTarget
    from dwrprune.cost.timing import machine_stamp, time_in_turns, timing_inputs

    targets = [LatencyTarget.parse(name).check() for name in args.targets.split(",")]
    original = dwrprune.load(dwrprune.pretrained.resolve(args.checkpoint))
    px0 = original.dwrprune_spec["input"]["resolution"]
    stamp = machine_stamp()
    machine = f"{stamp.get('cpu', 'this CPU')}, torch {stamp.get('torch', '')}"
    rows = []
    for run in runs:
        final = dwrprune.load(Path(run) / "final" / "model.pt")
        px = final.dwrprune_spec["input"]["resolution"]
        for target in targets:
            with timing_inputs([(original, px0), (final, px)], target.batch,
                               target.device) as calls:
                times = [time_in_turns(calls, target.threads, warmup=10,
                                       repeats=args.repeats, runtime=target.runtime)
                         for _ in range(args.rounds)]
            for k, t in enumerate(times):
                a, b = statistics.median(t[0]), statistics.median(t[1])
                rows.append({"run": run, "target": target.key(), "round": k,
                             "resolution": px, "original_ms": a, "final_ms": b,
                             "ratio": b / a, "speedup": a / b, "repeats": args.repeats,
                             "machine": machine})
                print(f"{Path(run).name} {target.key()} round {k}: original {a:.3f} ms, "
                      f"final {b:.3f} ms, {b / a:.3f} of the original", flush=True)
    write_rows(args.out, "finals.csv", FIELDS, rows)
    write_table(args, table(rows))


if __name__ == "__main__":
    main()
