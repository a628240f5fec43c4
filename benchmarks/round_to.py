"""Does ``--round-to`` change the latency?  Shrinks a model to given (d, w, r) points with the
channel counts the width allocation gives and with them rounded to multiples of 8 and 16,
and times every variant beside the original on each target (round-robin, median of
``--repeats`` rounds); writes ``round_to.csv`` and ``table.md`` to ``--out``.

    python benchmarks/round_to.py --checkpoint mobilenetv2-fashion-mnist \\
        --run benchmarks/results/pipeline/mobilenetv2-fmnist-full \\
        --points "1,0.703,1;0.6,0.8,0.857" --round-to 8,16 --targets cpu-b1,ort-b1 \\
        --out benchmarks/results/round-to-mobilenetv2 [--update-docs --block TAG]

``--run``: prune with that run folder's block ranking and options (what ``prune`` would
build); without it, blocks are ranked by weight norm.  Timing only: no training.
``--render``: measure nothing, rebuild the table (and the docs block) from the CSV.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from docs_block import add_output_args, read_rows, write_rows, write_table

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ["target", "d", "w", "r", "round_to", "resolution", "macs_ratio", "channels",
          "median_ms", "ratio", "original_ms", "repeats", "machine"]


def points(text: str) -> list[tuple[float, float, float]]:
    out = []
    for p in text.split(";"):
        d, w, r = (float(v) for v in p.split(","))
        out.append((d, w, r))
    return out


def channel_summary(model) -> str:
    """The distinct output channel counts of the model's convolutions, smallest first."""
    from torch import nn

    counts = sorted({m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)})
    return "/".join(str(c) for c in counts)


def table(rows: list[dict]) -> str:
    """One line per (target, point): its latency against the original's as allocated and
    with each rounding, the MACs ratio each rounding gives beside it.  ``rows`` are
    round_to.csv's (strings) or the measuring loop's."""
    roundings = list(dict.fromkeys(str(x["round_to"] or "") for x in rows))
    head = ["as allocated" if not k else f"round to {k}" for k in roundings]
    lines = ["| target | (d, w, r) | px | " + " | ".join(head) + " |",
             "|---|---|---|" + "---|" * len(head)]
    cells: dict[tuple, dict[str, str]] = {}
    for x in rows:
        key = (x["target"], float(x["d"]), float(x["w"]), float(x["r"]), x["resolution"])
        cells.setdefault(key, {})[str(x["round_to"] or "")] = (
            f"{float(x['ratio']):.2f}x ({float(x['median_ms']):.2f} ms, MACs "
            f"{float(x['macs_ratio']):.2f})")
    for (target, d, w, r, px), c in cells.items():
        lines.append(f"| {target} | ({d:.3g}, {w:.3g}, {r:.3g}) | {px} | "
                     + " | ".join(c.get(k, "-") for k in roundings) + " |")
    first = rows[0] if rows else {}
    return "\n".join(lines) + (
        "\n\nLatency against the original's on the target (the channel counts of each "
        f"variant are in round_to.csv).  Measured on {first.get('machine')}, median of "
        f"{first.get('repeats')} rounds, each variant timed in turn with the original."
        if rows else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="resnet20-fashion-mnist")
    ap.add_argument("--run", default=None, help="run folder whose block ranking to use")
    ap.add_argument("--points", type=points, default=None, help='"d,w,r;d,w,r"')
    ap.add_argument("--round-to", default="8,16")
    ap.add_argument("--targets", default="cpu-b1,ort-b1")
    ap.add_argument("--repeats", type=int, default=100)
    add_output_args(ap, "round_to.csv")
    args = ap.parse_args()
    if args.render:
        write_table(args, table(read_rows(args.out, "round_to.csv")))
        return
    if not args.points:
        ap.error("--points is required (unless --render)")

    import dwrprune
    from dwrprune.cost.latency import LatencyTarget
    from dwrprune.cost.timing import machine_stamp, time_in_turns, timing_inputs
    from dwrprune.pipeline import Run, build_shrinker, resolve_config, run_shrinker

    model = dwrprune.load(dwrprune.pretrained.resolve(args.checkpoint))
    if args.run:
        cfg, _ = Run(args.run).load_config()
    else:
        cfg = resolve_config(None, depth_criterion="weight_norm")
    rounds = [None] + [int(k) for k in args.round_to.split(",") if k]

    def shrinker(k):
        c = cfg.replace(round_to=k)
        return run_shrinker(Run(args.run), model, c) if args.run else \
            build_shrinker(model, c, None)

    shrinkers = {k: shrinker(k) for k in rounds}
    base = shrinkers[None]
    variants = []  # (point, round_to, model, resolution)
    for d, w, r in args.points:
        for k in rounds:
            res = shrinkers[k].shrink(d, w, r)
            variants.append(((d, w, r), k, res.model, res.spec["input"]["resolution"]))
    stamp = machine_stamp()
    machine = f"{stamp.get('cpu', 'this CPU')}, torch {stamp.get('torch', '')}"
    rows = []
    for name in args.targets.split(","):
        target = LatencyTarget.parse(name).check()
        models = [(model, base.base_resolution)] + [(m, px) for _, _, m, px in variants]
        with timing_inputs(models, target.batch, target.device, base.in_channels) as calls:
            times = time_in_turns(calls, target.threads, warmup=5, repeats=args.repeats,
                                  runtime=target.runtime)
        orig = statistics.median(times[0])
        for (pt, k, m, px), t in zip(variants, times[1:]):
            ms = statistics.median(t)
            rows.append({"target": target.key(), "d": pt[0], "w": pt[1], "r": pt[2],
                         "round_to": k or "", "resolution": px,
                         "macs_ratio": shrinkers[k].macs(*pt) / base.macs(1, 1, 1),
                         "channels": channel_summary(m), "median_ms": ms, "ratio": ms / orig,
                         "original_ms": orig, "repeats": args.repeats, "machine": machine})
            print(f"{target.key()} {pt} round_to={k}: {ms:.3f} ms = {ms / orig:.3f}x "
                  f"({channel_summary(m)})", flush=True)
    write_rows(args.out, "round_to.csv", FIELDS, rows)
    write_table(args, table(rows))


if __name__ == "__main__":
    main()
