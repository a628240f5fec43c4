"""Three-dimensional pruning vs one-dimensional pruning vs Torch-Pruning, at equal MACs.

    python benchmarks/compare.py run [--budgets 0.5,0.3] [--seeds 0,1,2] [--epochs 3] ...
    python benchmarks/compare.py render [--out benchmarks/results] [--update-docs [--block B]]
    python benchmarks/compare.py run --quick        # tiny model, synthetic data (CI)
    python benchmarks/compare.py choices --out OUT [--config C]   # 3d's choice now, no training

`run` appends one CSV row per (method, budget, seed) to OUT/results.csv as each finishes
(a stopped run resumes).  `render` turns the CSV into a Markdown table (mean +- std over
seeds) and OUT/compare.png (accuracy vs MACs, latency vs MACs per method; for a comparison
at equal measured latency, accuracy vs measured latency).
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _floats(s):
    return [float(x) for x in s.split(",")]


def _ints(s):
    return [int(x) for x in s.split(",")]


def cmd_run(args) -> None:
    import dwrprune
    from dwrbench.bench import METHODS, run_benchmark
    from dwrbench.methods import DROP_METHODS
    from dwrprune import DwrpruneError
    from dwrprune.pipeline import DatasetSource, resolve_config

    if args.quick:  # a tiny model trained on the spot: exercises every code path in seconds
        from dwrprune.cli import main as cli

        pipe = resolve_config(None, args.config, data="synthetic",
                              depth_criterion="weight_norm", depth_steps=[0.75, 0.5],
                              width_steps=[0.75, 0.5], resolution_steps=[0.75, 0.5],
                              mixed_points=[[0.75, 0.75, 0.75]], holdout_points=[],
                              finetune_steps=2, batch_size=32, recal_batches=2, max_degree=1)
        ck = Path(args.out) / "tiny"
        if not (ck / "model.pt").exists():
            cli(["train", "--model", "resnet_tiny2", "--data", "synthetic", "--steps", "40",
                 "--lr", "0.05", "--out", str(ck), "--no-progress"])
        model = dwrprune.load(ck / "model.pt")
        data = DatasetSource("synthetic", batch_size=32)
        recipe = dwrprune.TrainConfig(steps=3, lr=0.01)
        budgets, seeds, subset = [0.5], [0, 1], None
    else:
        model = dwrprune.load(dwrprune.pretrained.resolve(args.checkpoint))
        data = DatasetSource(args.data, args.data_dir, batch_size=args.batch_size)
        pipe = resolve_config(args.preset, args.config, data=args.data,
                              data_dir=args.data_dir, batch_size=args.batch_size,
                              precision=args.precision)
        recipe = dwrprune.TrainConfig(epochs=args.epochs, lr=args.lr, seed=0,
                                      precision=args.precision)
        budgets, seeds, subset = args.budgets, args.seeds, args.finetune_subset
    target = None
    if args.latency_budgets and args.max_drops:
        raise DwrpruneError("give --latency-budgets or --max-drops, not both")
    if args.latency_budgets or args.max_drops:
        from dwrprune.cost.latency import LatencyTarget

        target = LatencyTarget("cuda" if args.runtime == "cuda-graph" else args.device,
                               args.latency_batch, args.threads, args.runtime)
        budgets = args.latency_budgets or args.max_drops
    if args.max_drops:
        methods = args.methods.split(",") if args.methods else list(DROP_METHODS)
    else:
        methods = (args.methods.split(",") if args.methods else
                   list(METHODS) + (["3d-latency"] if target else []))
    import dwrbench
    from dwrprune.pipeline.executors import create_executor

    executor = create_executor(args.executor, args.ray_address, args.retries,
                               py_modules=[dwrbench])
    try:
        csv_path = run_benchmark(model, data, methods, budgets, seeds, recipe, pipe, args.out,
                                 finetune_subset=subset, progress=not args.no_progress,
                                 executor=executor, latency_target=target,
                                 max_drop=bool(args.max_drops),
                                 collection_seed=args.collection_seed)
    finally:
        executor.close()
    print(f"results: {csv_path}")
    if args.quick:
        args.update_docs = False
        cmd_render(args)


def table(summary: list[dict]) -> str:
    from dwrprune.cost.latency import LatencyTarget

    def pm(s, key, scale=1.0, fmt="{:.2f}"):
        if s[key] is None:
            return "-"
        return (fmt.format(s[key] * scale) + " ± " + fmt.format(s[key + "_std"] * scale))

    def speedup(s, b):  # against the original timed beside each model, where it was
        ratio, lat, orig = (s[f"latency_{b}_ratio"], s[f"latency_{b}_ms"],
                            s[f"original_latency_{b}_ms"])
        if ratio:
            return f"{1 / ratio:.2f}x"
        return f"{orig / lat:.2f}x" if lat and orig else "-"

    kind = summary[0].get("budget_kind") if summary else None
    if kind and kind.startswith("drop-"):
        return drop_table(summary, kind.removeprefix("drop-"))
    note = []
    if kind and kind.startswith("latency"):
        ms = {s["budget"]: s["latency_budget_ms"] for s in summary if s["latency_budget_ms"]}
        runtime = LatencyTarget.from_key(kind.removeprefix("latency-")).runtime
        note = [f"Budgets are fractions of the original's measured latency on the target "
                f"({kind}), timed as each run began: " + ", ".join(
                    f"{b:g} x {v / b:.2f} ms = {v:.2f} ms" for b, v in sorted(ms.items()))
                + "." + (f"  The latency columns are measured in {runtime}, one CPU thread."
                         if runtime != "torch" else ""), ""]
    lines = note + [
        "| budget | method | seeds | MACs ratio | MACs cut | test acc pruned (%) | test acc "
        "fine-tuned (%) | latency b1 (ms) | speed-up b1 | latency b64 (ms) | speed-up b64 "
        "| prune + collect (s) |", "|" + "---|" * 12]
    for s in summary:
        if s["status"] != "ok":
            lines.append(infeasible_row(s, 12))
            continue
        cost = (s["prune_seconds"] or 0) + (s["collection_seconds"] or 0)
        lines.append(
            f"| {s['budget']:g} | {s['method']} | {s['seeds']} | {s['macs_ratio']:.3f} | "
            f"{1 / s['macs_ratio']:.2f}x | "
            f"{pm(s, 'test_acc_pruned', 100)} | {pm(s, 'test_acc', 100)} | "
            f"{pm(s, 'latency_b1_ms')} | {speedup(s, 'b1')} | "
            f"{pm(s, 'latency_b64_ms', fmt='{:.1f}')} | {speedup(s, 'b64')} | {cost:.0f} |")
    if summary and summary[0].get("original_test_acc") is not None:
        s = summary[0]
        lat = (f", latency {s['original_latency_b1_ms']:.2f} ms (b1), "
               f"{s['original_latency_b64_ms']:.1f} ms (b64)"
               if s["original_latency_b64_ms"] is not None else " (latency not measured yet)")
        lines.append(f"\nUnpruned: test accuracy {100 * s['original_test_acc']:.2f}%{lat}.")
    return "\n".join(lines)


def infeasible_row(s: dict, columns: int, why: str = "infeasible") -> str:
    """A table row for a (method, budget) no seed could reach: dashes after the seeds."""
    return (f"| {s['budget']:g} | {s['method']} | {s['seeds']} | {why} |"
            + " - |" * (columns - 4))


def drop_table(summary: list[dict], target: str) -> str:
    """The fastest model within an accuracy drop: per (drop, method), the fine-tuned test
    accuracy, its drop below the original and the latency on the target."""
    orig = summary[0]["original_test_acc"]
    lines = [f"The fastest model on {target} whose hedged predicted validation accuracy stays "
             "within the drop; latency measured beside the original in one pass.  \"No pruned "
             "model within the drop\" (\"none\"): none is predicted within it, or none of "
             "those runs faster than the original.", "",
             "| max drop (points) | method | seeds | MACs ratio | test acc fine-tuned (%) | "
             "test drop (points) | latency b1 (ms) | speed-up b1 |", "|" + "---|" * 8]
    for s in summary:
        if s["status"] != "ok":
            lines.append(infeasible_row(s, 8, "no pruned model within the drop"))
            continue
        drop = 100 * (orig - s["test_acc"])
        ratio = s["latency_b1_ratio"]
        seeds = (s["seeds"] if s["ok_seeds"] == s["seeds"] else
                 f"{s['ok_seeds']} of {s['seeds']} (the others: none)")
        lines.append(
            f"| {s['budget']:g} | {s['method']} | {seeds} | {s['macs_ratio']:.3f} | "
            f"{100 * s['test_acc']:.2f} ± {100 * s['test_acc_std']:.2f} | {drop:.2f} | "
            + (f"{s['latency_b1_ms']:.3f} ± {s['latency_b1_ms_std']:.3f} | {1 / ratio:.2f}x |"
               if ratio else "- | - |"))
    lat = summary[0]["original_latency_b1_ms"]
    lines.append(f"\nUnpruned: test accuracy {100 * orig:.2f}%"
                 + (f", latency {lat:.3f} ms (b1)." if lat else "."))
    return "\n".join(lines)


def reference_line(out: Path) -> str:
    """Per seed, the 3d collection's reference sample (the original fine-tuned as briefly as
    the samples, which ``--max-drop`` counts the drop from): its shortfall below the original
    on validation and that figure's paired noise; empty where no collection has one."""
    from dwrprune.pipeline import Run
    from dwrprune.pipeline.solve import drop_reference

    parts = []
    for d in sorted((out / "3d").glob("seed*")):
        ref = drop_reference(Run(d)) if (d / "samples.sqlite").is_file() else None
        if ref is not None:
            parts.append(f"{d.name.removeprefix('seed')}: {100 * ref.shortfall:.2f} "
                         f"(sd {100 * ref.sd:.2f})")
    if not parts:
        return ""
    return ("The drop is counted from each seed's reference sample, the original fine-tuned as "
            "briefly as the samples; points of validation accuracy it scored below the "
            "original, per seed (paired sd): " + "; ".join(parts) + ".")


def target_batch(summary: list[dict]) -> int | None:
    """The batch size of a latency comparison (its budget kind names the target:
    ``latency-cpu-b1-t1``), None for a MACs comparison."""
    from dwrprune.cost.latency import LatencyTarget

    kind = (summary[0].get("budget_kind") or "macs") if summary else "macs"
    if kind == "macs":
        return None
    return LatencyTarget.from_key(kind.split("-", 1)[1]).batch


def plot(summary: list[dict], path: Path) -> None:
    """MACs comparison: accuracy and batch-1 latency against the MACs ratio.  Latency
    comparison: accuracy against the latency measured at the target's batch size as a
    fraction of the original's (timed in the same pass, so the host's drift between the
    budget being set and the pass cancels), with each budget as a vertical line (a method
    left of its line is within budget)."""
    from dwrprune.pipeline.report import plt, save_figure  # pyplot on the non-interactive backend

    batch = target_batch(summary)
    shown = batch if batch in (1, 64) else 1  # the rows measure batches 1 and 64 only
    lat_key = f"latency_b{shown}_ratio"  # against the original timed in the same pass
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for method in sorted({s["method"] for s in summary}):
        pts = [s for s in summary if s["method"] == method and s["status"] == "ok"]
        if not pts:
            continue
        acc = [100 * s["test_acc"] for s in pts]
        err = [100 * s["test_acc_std"] for s in pts]
        if batch is None:
            x = [s["macs_ratio"] for s in pts]
            axes[0].errorbar(x, acc, yerr=err, fmt="o-", label=method, capsize=3)
            axes[1].plot(x, [s["latency_b1_ms"] for s in pts], "o-", label=method)
        else:
            x = [s[lat_key] for s in pts]
            axes[0].errorbar(x, acc, yerr=err, xerr=[s[lat_key + "_std"] for s in pts],
                             fmt="o", label=method, capsize=3)
            axes[1].plot(x, [s["macs_ratio"] for s in pts], "o", label=method)
    axes[0].set_ylabel("test accuracy after fine-tuning (%)")
    if batch is None:
        axes[1].set_ylabel("CPU latency, batch 1 (ms)")
        for ax in axes:
            ax.set_xlabel("MACs / original MACs")
    else:
        drops = str(summary[0].get("budget_kind")).startswith("drop-")
        for b in sorted({s["budget"] for s in summary}) if not drops else []:
            for ax in axes:
                ax.axvline(b, color="grey", ls=":", lw=1)
        axes[1].set_ylabel("MACs / original MACs")
        for ax in axes:
            ax.set_xlabel(f"measured latency / original's, batch {shown} (dotted: budgets)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)


def cmd_render(args) -> None:
    from dwrbench.bench import summarise
    from dwrprune import DwrpruneError

    out = Path(args.out)
    if not (out / "results.csv").is_file():
        raise DwrpruneError(f"no results.csv in {out}; run `compare.py run --out {out}` first")
    summary = summarise(out / "results.csv")
    text = table(summary)
    if summary and str(summary[0].get("budget_kind")).startswith("drop-"):
        text += ("\n\n" + reference_line(out)).rstrip()
    print(text)
    plot(summary, out / "compare.png")
    (out / "table.md").write_text(text + "\n")
    if args.update_docs:
        from docs_block import update_docs

        batch = target_batch(summary)
        update_docs(args.block or ("compare-table" if batch is None
                                     else f"compare-latency-b{batch}"), text)


def cmd_latency(args) -> None:
    import dwrprune
    from dwrbench.bench import bundled_original, time_result_models

    checkpoint = args.checkpoint or bundled_original(args.out)
    if checkpoint is None:
        raise dwrprune.DwrpruneError(f"{args.out} was not filled from a bundled checkpoint "
                                     "(or has no bench_settings.json): give --checkpoint, the "
                                     "model its rows were pruned from")
    model = dwrprune.load(dwrprune.pretrained.resolve(checkpoint))
    n = time_result_models(args.out, model, repeats=args.repeats, remeasure=args.all,
                          progress=True)
    print(f"measured {n} rows in {Path(args.out) / 'results.csv'}")


def cmd_choices(args) -> None:
    """What 3d would choose with the current defaults (``--config`` over them) on the collections
    a MACs comparison folder holds (OUT/3d/seedN), beside the choice its rows record: whether
    a change of predictor or solver moves a committed 3d row, without fine-tuning anything."""
    import csv

    import dwrprune
    from dwrbench.bench import bundled_original
    from dwrprune.pipeline import Run, fit_samples, resolve_config, run_shrinker, solve_budget

    out = Path(args.out)
    seeds = sorted(int(p.name[4:]) for p in (out / "3d").glob("seed*") if p.name[4:].isdigit())
    if not seeds:
        raise dwrprune.DwrpruneError(f"no collections in {out / '3d'} (seedN folders a `run` "
                                     "with the 3d method makes)")
    checkpoint = args.checkpoint or bundled_original(out)
    if checkpoint is None:
        raise dwrprune.DwrpruneError(f"{out} was not filled from a bundled checkpoint: give "
                                     "--checkpoint, the model its rows were pruned from")
    model = dwrprune.load(dwrprune.pretrained.resolve(checkpoint))
    pipe = resolve_config(args.preset, args.config, precision=args.precision)
    rows = []
    if (out / "results.csv").exists():
        with open(out / "results.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    if any(r.get("budget_kind", "").startswith("latency") for r in rows):
        raise dwrprune.DwrpruneError(f"{out} compares at equal latency; `choices` checks MACs "
                                     "budgets (3d-latency steps its choice on the timings)")
    recorded = {(float(r["budget"]), int(r["seed"])): r["note"].split(";")[0]
                for r in rows if r["method"] == "3d" and r["status"] == "ok"}
    budgets = args.budgets or sorted({b for b, _ in recorded}) or [0.5, 0.3]
    for seed in seeds:
        run, cfg = Run(out / "3d" / f"seed{seed}"), pipe.replace(seed=seed)
        pred, _ = fit_samples(run.store(), cfg)
        shr = run_shrinker(run, model, cfg)
        for b in budgets:
            x = solve_budget(pred, shr, b, cfg.lower_bounds, cfg.min_gain_sigmas).best
            now, was = f"d={x.d:.3f} w={x.w:.3f} r={x.r:.3f}", recorded.get((b, seed))
            verdict = "" if was is None else ("same" if was == now else "CHANGED")
            print(f"seed {seed} | budget {b:g} | {pred.poly.name()} | now {now} | "
                  f"recorded {was or '-'} | {verdict}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--checkpoint", default="resnet20-fashion-mnist")
    r.add_argument("--data", default="fashion-mnist")
    r.add_argument("--data-dir", default=None)
    r.add_argument("--batch-size", type=int, default=128)
    r.add_argument("--methods", default=None, help="comma-separated (default: all)")
    r.add_argument("--budgets", type=_floats, default=[0.5, 0.3])
    r.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    r.add_argument("--epochs", type=int, default=3, help="fine-tune epochs (same for all)")
    r.add_argument("--lr", type=float, default=0.02)
    r.add_argument("--precision", default="fp32",
                   help="training precision of every fine-tune and sample (the committed "
                        "comparisons: fp32)")
    r.add_argument("--finetune-subset", type=int, default=None)
    r.add_argument("--collection-seed", type=int, default=None,
                   help="the 3d methods plan every seed from this seed's collection (each "
                        "seed's own by default): seeds then vary only the pruning's "
                        "re-calibration and the fine-tune; a row's note names the collection")
    r.add_argument("--preset", default="full", help="pipeline preset for the 3d method")
    r.add_argument("--config", default=None,
                   help="YAML of pipeline options over the preset for the 3d methods (as "
                        "`dwrprune prune --config`; e.g. the collection's fine-tune steps; "
                        "--quick keeps its own tiny steps)")
    r.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    r.add_argument("--quick", action="store_true")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="where the jobs run (ray: --ray-address, or a local Ray instance)")
    r.add_argument("--ray-address", default=None)
    r.add_argument("--retries", type=int, default=2, help="retries of a job whose worker died")
    r.add_argument("--latency-budgets", type=_floats, default=None,
                   help="compare at equal measured latency: fractions of the original's "
                        "latency on the target (use a separate --out)")
    r.add_argument("--max-drops", type=_floats, default=None,
                   help="instead of budgets: allowed accuracy drops (points); the fastest "
                        "model on the latency target within each (methods 3d-drop, "
                        "width-only-drop)")
    r.add_argument("--latency-batch", type=int, default=1)
    r.add_argument("--threads", type=int, default=1, help="threads latency is measured with")
    r.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    r.add_argument("--runtime", default="torch", choices=["torch", "onnxruntime", "cuda-graph"],
                   help="what latency is measured in (see dwrprune.cost.runtimes)")
    r.set_defaults(func=cmd_run)
    la = sub.add_parser("latency", help="(re-)measure the latency columns on a quiet machine")
    la.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    la.add_argument("--checkpoint", default=None,
                    help="the model the rows were pruned from (default: the bundled one the "
                         "folder was filled from)")
    la.add_argument("--repeats", type=int, default=30)
    la.add_argument("--all", action="store_true", help="every row, not only rows without")
    la.set_defaults(func=cmd_latency)
    c = sub.add_parser("choices", help="3d's choice with the current defaults on a folder's "
                                       "collections, beside its rows (no fine-tuning)")
    c.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    c.add_argument("--checkpoint", default=None,
                   help="the model the rows were pruned from (default: the bundled one the "
                        "folder was filled from)")
    c.add_argument("--preset", default="full")
    c.add_argument("--config", default=None, help="YAML of pipeline options over the preset")
    c.add_argument("--precision", default="fp32", help="the collections' training precision")
    c.add_argument("--budgets", type=_floats, default=None,
                   help="MACs budgets (default: those of the folder's 3d rows)")
    c.set_defaults(func=cmd_choices)
    d = sub.add_parser("render")
    d.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    d.add_argument("--update-docs", action="store_true")
    d.add_argument("--block", default=None,
                   help="docs block to write (default: compare-table, or compare-latency-bN "
                        "for a comparison at equal latency)")
    d.set_defaults(func=cmd_render)
    args = ap.parse_args()
    from dwrprune import DwrpruneError

    try:
        args.func(args)
    except DwrpruneError as e:
        ap.exit(2, f"compare.py: error: {e}\n")


if __name__ == "__main__":
    main()
