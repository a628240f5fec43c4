"""The iso-cost oracle: the ground truth a choice of (d, w, r) is judged against.

    python benchmarks/oracle.py run --budget 0.5 --seeds 0,1 --run RUN --out OUT
    python benchmarks/oracle.py render --out OUT --budget 0.5 --run RUN [--run RUN2 ...]
    python benchmarks/oracle.py candidates --out OUT --run RUN [--run RUN2 ...] \
        [--short-run SHORT ...]
    python benchmarks/oracle.py proxy --out OUT --run RUN
    python benchmarks/oracle.py shift --out OUT --first 0,1,2 --second 3,4,5,6,7
    python benchmarks/oracle.py run --quick        # tiny model, synthetic data (CI)

`run` fine-tunes every point on the budget's surface (one-axis points, the run's choice, a
spread over depth and resolution with width solved to the budget) with the benchmark recipe,
appending one row per (point, seed) to OUT/oracle.csv (a stopped run resumes; add seeds or
`--extra-seeds LABEL:2,3` later).  `render` prints the surface ranked by mean validation
accuracy, and for each run folder given: its choice at the budget, the regret of that choice
(best mean test accuracy on the surface minus the choice's) and the Spearman correlation of its
predictor with the oracle's mean validation accuracy.  The run folder's block ranking and
pipeline options are used to prune every point.  `candidates` judges predictors that need
more than one collection: the run folders' chain samples pooled, and extrapolated along a
learning curve from a shorter-horizon collection of the same seed.  `proxy` ranks the
points by EagleEye's adaptive-BN accuracy (no fine-tune) instead of a predictor.  `shift`
checks that two groups of seeds (run on two machines, say) measure the same quantity.
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _floats(s):
    return [float(x) for x in s.split(",")]


def _ints(s):
    return [int(x) for x in s.split(",")]


def _extra(items):
    out = {}
    for item in items or []:
        label, _, seeds = item.partition(":")
        out[label] = _ints(seeds)
    return out


def _quick(out: Path):
    """A tiny model, a tiny collection and its run folder: every code path in seconds."""
    import dwrprune
    from dwrprune.cli import main as cli

    ck = out / "tiny"
    if not (ck / "model.pt").exists():
        cli(["train", "--model", "resnet_tiny2", "--data", "synthetic", "--steps", "40",
             "--lr", "0.05", "--out", str(ck), "--no-progress"])
    run = out / "run"
    if not (run / "predictor.json").exists():
        cli(["collect", "--checkpoint", str(ck / "model.pt"), "--data", "synthetic",
             "--depth-criterion", "weight_norm", "--depth-steps", "0.75,0.5",
             "--width-steps", "0.75,0.5", "--resolution-steps", "0.75,0.5",
             "--mixed-points", "0.75,0.75,0.75", "--holdout-points", "", "--finetune-steps",
             "2", "--batch-size", "32", "--recal-batches", "2", "--max-degree", "1",
             "--out", str(run), "--no-progress"])
        cli(["fit", "--run", str(run)])
    return dwrprune.load(ck / "model.pt"), run


def cmd_run(args) -> None:
    import dwrprune
    from dwrbench.oracle import default_grid, run_oracle
    from dwrprune.pipeline import DatasetSource, Run, run_shrinker

    out = Path(args.out)
    if args.quick:
        model, run_dir = _quick(out)
        data = DatasetSource("synthetic", batch_size=32)
        recipe = dwrprune.TrainConfig(steps=3, lr=0.01)
    else:
        run_dir = Path(args.run)
        cfg, checkpoint = Run(run_dir).load_config()
        model = dwrprune.load(dwrprune.pretrained.resolve(checkpoint))
        data = DatasetSource.from_config(cfg)
        recipe = dwrprune.TrainConfig(epochs=args.epochs, lr=args.lr, seed=0,
                                      precision=args.precision)
    run = Run(run_dir)
    cfg, _ = run.load_config()
    shr = run_shrinker(run, model, cfg)
    depths, resolutions = default_grid(shr)
    depths = args.depths or depths
    resolutions = args.resolutions or resolutions
    import dwrbench
    from dwrprune.pipeline.executors import Resources, create_executor

    executor = create_executor(args.executor, args.ray_address, py_modules=[dwrbench])
    try:
        for budget in args.budgets:
            csv_path = run_oracle(model, data, run_dir, budget, args.seeds, recipe, out,
                                  depths=depths, resolutions=resolutions, tol=args.tol,
                                  subset=args.finetune_subset,
                                  extra_seeds=_extra(args.extra_seeds),
                                  progress=not args.no_progress, choice_tag=args.choice_tag,
                                  executor=executor,
                                  resources=Resources(args.job_cpus, args.job_gpus))
    finally:
        executor.close()
    print(f"results: {csv_path}")
    if args.quick:
        args.run, args.update_docs = [str(run_dir)], False
        for budget in args.budgets:
            args.budget = budget
            cmd_render(args)


def _span(ns: list[int]) -> str:
    return f"{min(ns)}" if min(ns) == max(ns) else f"{min(ns)} to {max(ns)}"


def render(rows: list[dict], budget: float, runs: list[str]) -> str:
    from dwrbench.oracle import RANK_TARGET, summarise_oracle

    s = summarise_oracle(rows, budget)
    lines = [f"Budget {budget:g}: {len(s['points'])} points, ranked by mean validation "
             "accuracy (seeds: mean ± std).", "",
             "| point | d | w | r | MACs ratio | seeds | val acc (%) | test acc (%) | "
             "regret, test (pts) | predicted val (%) |", "|" + "---|" * 10]
    for p in s["points"]:
        ref = "" if p["iso"] else " (reference: not iso-cost)"
        lines.append(f"| {p['label']}{ref} | {p['d']:.3f} | {p['w']:.3f} | {p['r']:.3f} | "
                     f"{p['macs_ratio']:.3f} | {p['seeds']} | {100 * p['val']:.2f} ± "
                     f"{100 * p['val_std']:.2f} | {100 * p['test']:.2f} ± "
                     f"{100 * p['test_std']:.2f} | {100 * p['regret']:.2f} | "
                     f"{100 * p['predicted']:.2f} |")
    sp = s["seed_pairs"]
    if len(sp) > 3:  # beyond three seeds, every pair is too long a list: their range
        pairs = (f"{len(sp)} pairs over {_span([n for *_, n, _ in sp])} points, from "
                 f"{min(x[3] for x in sp):.2f} to {max(x[3] for x in sp):.2f}")
    else:
        pairs = "; ".join(f"seeds {a} and {b}: {rho:.2f} over {n} points" for a, b, n, rho in sp)
    note = (f"Best by mean validation accuracy: {s['best_by_val']}.  The oracle's own rank "
            "reliability, the Spearman correlation between two seeds' validation accuracies "
            "over the iso-cost points both have"
            + (f" (mean over seed pairs: {pairs})" if len(s["seed_pairs"]) > 1 else "")
            + f": {s['split_half']:.2f}.")
    held = s["held_out_seeds"]
    if len(s["seed_pairs"]) > 1:  # with two seeds this is the pair above
        note += ("  Each seed against the mean of the other seeds (what one more measurement "
                 "of exactly the oracle's quantity, one seed per point, reaches; "
                 + ("seeds " + ", ".join(str(a) for a, _, _ in held) + ": "
                    + ", ".join(f"{rho:.2f}" for *_, rho in held)
                    + f" over {_span([n for _, n, _ in held])} points"
                    if len(held) > 3 else
                    "; ".join(f"seed {a}: {rho:.2f} over {n} points" for a, n, rho in held))
                 + f"): mean {sum(x[2] for x in held) / len(held):.2f}.")
    rem = s["remeasure"]
    if len(rem) > 1:  # one seed is the held-out figure above
        note += ("  Every point measured again at the final horizon, k seeds each, against "
                 "the mean of its other seeds (mean over the choices of k seeds; how often "
                 f"it reaches {RANK_TARGET}): "
                 + ", ".join(f"k={k}: {rho:.2f} ({100 * ok:.0f}%)" for k, rho, ok, _ in rem)
                 + ".")
    lines += ["", note + "  Noise ceiling: a perfect predictor would rank these means at a "
              f"Spearman correlation of about {s['noise_ceiling']:.2f}, and reach {RANK_TARGET} in "
              f"{100 * s['noise_ceiling_pass']:.0f}% of redraws of their noise "
              "(`rank_noise_ceiling`).", ""]
    regrets: dict[str, list[tuple[float, float]]] = {}
    for i, rd in enumerate(runs):  # predictor candidates: for the first run folder only
        lines += judge_run(rows, budget, rd, regrets, candidates=i == 0) + [""]
    if len(runs) > 1:
        lines += [f"Mean regret over the {len(runs)} run folders (pipeline seeds), where every "
                  "run's choice is measured:", "", "| decision rule | runs | mean regret, val "
                  "(pts) | mean regret, test (pts) |", "|---|---|---|---|"]
        for rule, rs in regrets.items():
            if len(rs) == len(runs):
                lines.append(f"| {rule} | {len(rs)} | {100 * sum(v for v, _ in rs) / len(rs):.2f}"
                             f" | {100 * sum(t for _, t in rs) / len(rs):.2f} |")
    return "\n".join(lines)


def judge_run(rows: list[dict], budget: float, rd: str,
              regrets: dict | None = None, candidates: bool = True) -> list[str]:
    """One run folder's choices at ``budget`` under each decision rule, with regret, and
    the Spearman correlation of its predictor with the oracle."""
    from dwrbench.oracle import choice_variants, summarise_oracle
    from dwrprune.checkpoint import load
    from dwrprune.pipeline import Run, run_shrinker
    from dwrprune.pretrained import resolve

    run = Run(rd)
    cfg, checkpoint = run.load_config()
    pred, _ = run.predictor()
    shr = run_shrinker(run, load(resolve(checkpoint)), cfg)
    mine = summarise_oracle(rows, budget, pred)
    lines = [f"`{rd}`:", "", "| decision rule | chosen (d, w, r) | oracle point | "
             "regret, val (pts) | regret, test (pts) |", "|---|---|---|---|---|"]
    default = "choice" + (f"-z{cfg.min_gain_sigmas:g}" if cfg.min_gain_sigmas else "")
    for label, x in choice_variants(pred, shr, budget, cfg.lower_bounds).items():
        hit = find_point(mine["points"], x)
        if hit and regrets is not None:
            regrets.setdefault(label, []).append((hit["val_regret"], hit["regret"]))
        name = label + (" (the run's rule)" if label == default else "")
        lines.append(f"| {name} | ({x.d:.3f}, {x.w:.3f}, {x.r:.3f}) | "
                     + (f"{hit['label']} | {100 * hit['val_regret']:.2f} | "
                        f"{100 * hit['regret']:.2f} |" if hit else
                        "not measured yet (oracle.py run --run " + rd + ") | | |"))
    lines += ["", f"Spearman(predictor, oracle val) over the iso-cost points: "
              f"{mine['spearman']:.2f}"]
    return lines + (candidate_lines(rows, budget, run, cfg, shr) if candidates else [])


def candidate_lines(rows, budget, run, cfg, shr) -> list[str]:
    """Predictor candidates fitted to the run's own samples, judged on the oracle: the
    fitted target (validation accuracy, or validation loss: less noisy), the sample kinds
    used and the model (monotone interpolation, the polynomials, or linear ones).  Spearman
    against the oracle's mean validation accuracy (for a loss predictor, of minus the
    predicted loss), and for each decision rule (plain optimum, hedged by one sd) the
    candidate's choice with its regret on validation and on test."""
    import numpy as np

    from dwrbench.oracle import summarise_oracle
    from dwrprune.pipeline import fit_samples, solve_budget
    from dwrprune.search.predictor import POLYNOMIALS, fit_predictor

    samples = run.store().samples(kinds=("original", "chain", "mixed"))
    pts = summarise_oracle(rows, budget)["points"]
    lines = ["", "| predictor candidate | LOO RMSE | Spearman vs oracle val | rule | choice | "
             "regret, val (pts) | regret, test (pts) |", "|---|---|---|---|---|---|---|"]
    poly = cfg.replace(families=list(POLYNOMIALS), fit_mixed=False)
    variants = {"accuracy, monotone interpolation of the one-axis samples (families: pchip)":
                    lambda: fit_samples(run.store(), cfg.replace(families=["pchip"]))[0],
                "accuracy, one-axis chains only, polynomial (families: separable, cp, full)":
                    lambda: fit_samples(run.store(), poly)[0],
                "accuracy, one-axis chains only, linear (max_degree: 1)":
                    lambda: fit_samples(run.store(), poly.replace(max_degree=1))[0],
                "accuracy, all samples, polynomial (fit_mixed: true)":
                    lambda: fit_samples(run.store(), poly.replace(fit_mixed=True))[0],
                "-loss, all samples, polynomial": lambda: fit_predictor(
                    np.array([[s.d, s.w, s.r] for s in samples]),
                    np.array([-s.val_loss for s in samples]), None, POLYNOMIALS,
                    cfg.max_degree, cfg.max_rank, cfg.monotone)}
    for name, fit in variants.items():
        pred = fit()
        mine = summarise_oracle(rows, budget, pred)
        for z in (0.0, 1.0):
            x = solve_budget(pred, shr, budget, cfg.lower_bounds, z).best
            hit = find_point(pts, x)
            lines.append(f"| {name} ({pred.poly.name()}) | {pred.loo_rmse:.4f} | "
                         f"{mine['spearman']:.2f} | {'optimum' if z == 0 else f'hedge {z:g} sd'}"
                         f" | ({x.d:.3f}, {x.w:.3f}, {x.r:.3f}) | "
                         + (f"{100 * hit['val_regret']:.2f} | {100 * hit['regret']:.2f} |"
                            if hit else "not measured | |"))
    return lines


def find_point(points: list[dict], x) -> dict | None:
    """The oracle point that realises the same pruned model as candidate ``x``."""
    key = (round(x.d, 6), round(x.r, 6), round(x.macs_ratio, 9))
    return next((p for p in points if (round(p["d"], 6), round(p["r"], 6),
                                       round(p["macs_ratio"], 9)) == key), None)


def _chain_samples(rd: str) -> tuple[dict, object]:
    from dwrprune.pipeline import Run

    run = Run(rd)
    cfg, _ = run.load_config()
    return {s.key: s for s in run.store().samples(kinds=("original", "chain"))}, cfg


def cmd_candidates(args) -> None:
    """Predictor candidates that cost more collections than one, judged on the oracle by
    Spearman: each run's own chain samples; the chain samples of all runs pooled (k
    collections: a lower-noise target); and, with ``--short-run`` folders (the same seeds at
    a shorter collection horizon), each sample's accuracy extrapolated along a learning
    curve to the oracle's horizon (multi-fidelity)."""
    import numpy as np

    from dwrbench.oracle import (
        corrected_predictor,
        extrapolate_horizon,
        read_rows,
        summarise_oracle,
    )
    from dwrprune import DwrpruneError
    from dwrprune.pipeline import Run
    from dwrprune.search.predictor import fit_predictor

    rows = read_rows(Path(args.out) / "oracle.csv")
    if args.short_run and len(args.short_run) != len(args.run):
        raise DwrpruneError("give one --short-run per --run (the same seeds, in order)")
    longs = [_chain_samples(rd) for rd in args.run]
    cfg = longs[0][1]
    sets = {"own chain samples": [{k: s.val_acc for k, s in ss.items()} for ss, _ in longs]}
    shorts = [_chain_samples(rd) for rd in args.short_run or []]  # read once, every power
    for power in args.powers if shorts else []:
        per_run = []
        for (ss, c), (short, cs) in zip(longs, shorts, strict=True):
            per_run.append({k: extrapolate_horizon(short[k].val_acc, s.val_acc,
                                                   cs.finetune_steps, c.finetune_steps,
                                                   args.target_steps, power)
                            for k, s in ss.items() if k in short})
        sets[f"extrapolated to {args.target_steps} steps (power {power:g})"] = per_run
    xyz = {k: [s.d, s.w, s.r] for ss, _ in longs for k, s in ss.items()}

    final, source = None, None
    if args.final_run:  # its pruned samples, at the oracle's horizon
        fs = Run(args.final_run).store().samples(kinds=("chain", "mixed"))
        final = (np.array([[s.d, s.w, s.r] for s in fs]), np.array([s.val_acc for s in fs]))
        source = Path(args.final_run).name
    elif args.final_oracle is not None:  # a diagnostic: another budget's ground truth
        fr = [r for r in rows if abs(float(r["budget"]) - args.final_oracle) < 1e-9]
        if not fr:
            raise DwrpruneError(f"no oracle rows at budget {args.final_oracle:g}")
        final = (np.array([[float(r[k]) for k in "dwr"] for r in fr]),
                 np.array([float(r["val_acc"]) for r in fr]))
        source = f"the oracle's {len(fr)} rows at {args.final_oracle:g}"
    variants = [(name, per_run, None) for name, per_run in sets.items()]
    if final is not None:  # each candidate again, corrected at the final horizon
        variants += [(f"{name}, corrected by {source} (linear)", per_run, final)
                     for name, per_run in sets.items()]

    def rho(targets: list[dict], correction) -> list[float]:
        X = np.array([xyz[k] for t in targets for k in t])
        y = np.array([v for t in targets for v in t.values()])
        pred = fit_predictor(X, y, None, args.families or cfg.families, cfg.max_degree,
                             cfg.max_rank, cfg.monotone)
        if correction is not None:
            pred = corrected_predictor(pred, *correction)
        return [float("nan") if correction is not None and b == args.final_oracle  # its own
                else summarise_oracle(rows, b, pred)["spearman"] for b in args.budgets]

    head = " | ".join(f"Spearman {b:g}: per run | mean | pooled" for b in args.budgets)
    lines = [f"| candidate | {head} |", "|---|" + "---|---|---|" * len(args.budgets)]
    for name, per_run, correction in variants:
        each = np.array([rho([t], correction) for t in per_run])
        pooled = rho(per_run, correction)
        cells = [f"{', '.join(f'{x:.2f}' for x in each[:, i])} | {each[:, i].mean():.2f} | "
                 f"{pooled[i]:.2f}" for i in range(len(args.budgets))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    print("\n".join(lines))
    name = ("candidates.md" if args.final_oracle is None else
            f"candidates-corrected-by-oracle-{args.final_oracle:g}.md")
    (Path(args.out) / name).write_text("\n".join(lines) + "\n")


def cmd_proxy(args) -> None:
    """EagleEye's adaptive-BN proxy (prune, re-calibrate BatchNorm, score on validation, no
    fine-tune) at every iso-cost point, ranked against the oracle's mean validation
    accuracy: does the proxy that ranks width allocations also rank depth and resolution?"""
    from scipy.stats import spearmanr

    import dwrprune
    from dwrbench.oracle import adaptive_bn_scores, read_rows, summarise_oracle
    from dwrprune.pipeline import DatasetSource, Run

    out = Path(args.out)
    rows = read_rows(out / "oracle.csv")
    cfg, checkpoint = Run(args.run).load_config()
    model = dwrprune.load(dwrprune.pretrained.resolve(checkpoint))
    data = DatasetSource.from_config(cfg)
    lines = []
    for budget in args.budgets:
        iso = [p for p in summarise_oracle(rows, budget)["points"] if p["iso"]]
        scores = adaptive_bn_scores(model, data, args.run, iso, args.recal_batches)
        oracle = [p["val"] for p in iso]
        rho_acc = spearmanr([s["val_acc"] for s in scores], oracle).statistic
        rho_loss = spearmanr([-s["val_loss"] for s in scores], oracle).statistic
        block = [f"Budget {budget:g}: adaptive-BN proxy ({args.recal_batches} batches) at "
                 f"the {len(iso)} iso-cost points; Spearman against the oracle's mean "
                 f"validation accuracy: {rho_acc:.2f} (proxy accuracy), {rho_loss:.2f} "
                 "(minus proxy loss).", "",
                 "| point | d | w | r | oracle val (%) | proxy val acc (%) | proxy val loss |",
                 "|---|---|---|---|---|---|---|"]
        block += [f"| {p['label']} | {p['d']:.3f} | {p['w']:.3f} | {p['r']:.3f} | "
                  f"{100 * p['val']:.2f} | {100 * s['val_acc']:.2f} | {s['val_loss']:.3f} |"
                  for p, s in zip(iso, scores, strict=True)] + [""]
        print("\n".join(block), flush=True)
        lines += block
    (out / "proxy-adaptive-bn.md").write_text("\n".join(lines))


def cmd_render(args) -> None:
    from dwrbench.oracle import read_rows

    out = Path(args.out)
    text = render(read_rows(out / "oracle.csv"), args.budget, args.run or [])
    print(text)
    if args.update_docs:  # the committed tables; without it, only printed (a trial run)
        from docs_block import update_docs

        (out / f"oracle_{args.budget:g}.md").write_text(text + "\n")
        update_docs(f"oracle-{args.budget:g}", text)


def cmd_shift(args) -> None:
    from dwrbench.oracle import read_rows, seed_group_shift

    rows = read_rows(Path(args.out) / "oracle.csv")
    for budget in args.budgets:
        s = seed_group_shift(rows, budget, set(args.first), set(args.second))
        print(f"budget {budget:g}: seeds {_join(args.second)} minus seeds {_join(args.first)}, "
              f"per point, mean ± standard error over {s['val'][2]} points: validation "
              f"{100 * s['val'][0]:+.2f} ± {100 * s['val'][1]:.2f}, test "
              f"{100 * s['test'][0]:+.2f} ± {100 * s['test'][1]:.2f} points")


def _join(xs: list[int]) -> str:
    return ",".join(map(str, xs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--run", help="pipeline run folder (ranking, options, predictor)")
    r.add_argument("--budgets", type=_floats, default=[0.5])
    r.add_argument("--seeds", type=_ints, default=[0, 1])
    r.add_argument("--extra-seeds", nargs="*", help="LABEL:SEEDS, more seeds for a point")
    r.add_argument("--depths", type=_floats, default=None, help="grid depths (default: spread)")
    r.add_argument("--resolutions", type=_floats, default=None, help="grid resolutions")
    r.add_argument("--tol", type=float, default=0.03,
                   help="how far under the budget a point may be (fraction of original MACs)")
    r.add_argument("--epochs", type=int, default=3, help="the benchmark recipe's epochs")
    r.add_argument("--lr", type=float, default=0.02)
    r.add_argument("--precision", default="fp32",
                   help="training precision of the fine-tunes (the committed oracle: fp32)")
    r.add_argument("--finetune-subset", type=int, default=None)
    r.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "oracle"))
    r.add_argument("--choice-tag", default="",
                   help="suffix for the run's choice labels (choice@TAG): a second run folder")
    r.add_argument("--quick", action="store_true")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="where the fine-tunes run (ray: side by side; --ray-address, or a "
                        "local Ray instance)")
    r.add_argument("--ray-address", default=None)
    r.add_argument("--job-cpus", type=float, default=1.0, help="CPUs each fine-tune asks Ray for")
    r.add_argument("--job-gpus", type=float, default=0.0,
                   help="GPUs each fine-tune asks Ray for (0.125: eight share one GPU)")
    r.set_defaults(func=cmd_run)
    d = sub.add_parser("render")
    d.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "oracle"))
    d.add_argument("--budget", type=float, default=0.5)
    d.add_argument("--run", action="append", help="run folder whose choice to judge")
    d.add_argument("--update-docs", action="store_true")
    d.set_defaults(func=cmd_render)
    h = sub.add_parser("shift", help="do two groups of seeds measure the same quantity?")
    h.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "oracle"))
    h.add_argument("--budgets", type=_floats, default=[0.5, 0.3])
    h.add_argument("--first", type=_ints, required=True, help="seeds, e.g. 0,1,2")
    h.add_argument("--second", type=_ints, required=True, help="seeds, e.g. 3,4,5,6,7")
    h.set_defaults(func=cmd_shift)
    c = sub.add_parser("candidates", help="pooled and extrapolated predictor candidates")
    c.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "oracle"))
    c.add_argument("--budgets", type=_floats, default=[0.5, 0.3])
    c.add_argument("--run", action="append", required=True,
                   help="run folder (one per pipeline seed)")
    c.add_argument("--short-run", action="append",
                   help="the same seed's run folder at a shorter collection horizon")
    c.add_argument("--target-steps", type=int, default=1266,
                   help="the oracle recipe's fine-tune steps (3 epochs of 422)")
    c.add_argument("--powers", type=_floats, default=[0.5, 1.0],
                   help="learning-curve exponents to extrapolate with")
    final = c.add_mutually_exclusive_group()
    final.add_argument("--final-run", default=None,
                   help="a collection at the oracle's horizon (a few samples): each candidate "
                        "also corrected by a linear fit to what it misses there")
    final.add_argument("--final-oracle", type=float, default=None,
                   help="a diagnostic instead of --final-run: correct each candidate by the "
                        "oracle's own rows at this budget (far over the 4x cost rule), "
                        "judged at the other budgets only")
    c.add_argument("--families", type=lambda x: x.split(","), default=None,
                   help="predictor families (default: the run's; cp is slow on pooled samples)")
    c.set_defaults(func=cmd_candidates)
    x = sub.add_parser("proxy", help="EagleEye's adaptive-BN proxy ranked against the oracle")
    x.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "oracle"))
    x.add_argument("--run", required=True, help="run folder (model, data, block ranking)")
    x.add_argument("--budgets", type=_floats, default=[0.5, 0.3])
    x.add_argument("--recal-batches", type=int, default=50,
                   help="training batches BatchNorm is re-calibrated on (EagleEye: 50)")
    x.set_defaults(func=cmd_proxy)
    args = ap.parse_args()
    if args.cmd == "run" and not args.quick and not args.run:
        ap.error("run needs --run RUN (or --quick)")
    if args.cmd == "run" and not (args.job_cpus > 0 and args.job_gpus >= 0):
        ap.error(f"--job-cpus must be > 0 and --job-gpus >= 0, got {args.job_cpus:g} and "
                 f"{args.job_gpus:g}")
    from dwrprune import DwrpruneError

    try:
        args.func(args)
    except DwrpruneError as e:
        ap.exit(2, f"oracle.py: error: {e}\n")


if __name__ == "__main__":
    main()
