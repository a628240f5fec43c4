"""Subcommands on a run folder: prune (everything), collect, fit, plan, finetune,
report."""

from __future__ import annotations

import argparse

from ..errors import DwrpruneError
from .options import (
    _FIELD_TYPES,
    _floats,
    add_checkpoint_arg,
    add_model_args,
    add_progress_arg,
    command,
    load_model,
    progress,
)


# ---------------------------------------------------------------------------- pipeline
def add_pipeline_args(p, only: tuple[str, ...] | None = None) -> None:
    """One option per PipelineConfig field (default None: 'not given, use config/preset')."""
    from dataclasses import fields

    from ..pipeline import PipelineConfig
    from ..pipeline.config import field_defaults

    defaults = field_defaults()
    for f in fields(PipelineConfig):
        if only is not None and f.name not in only:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_ = f"{f.metadata.get('help', '')} (default {defaults[f.name]})".strip()
        if f.type == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                           help=help_)
        else:
            p.add_argument(flag, type=_FIELD_TYPES[f.type], default=None, help=help_,
                           action=_NoneGiven if f.type.endswith("| None") else "store")


class _NoneGiven(argparse.Action):
    """Stores the value, and remembers an option given as ``none``: None is also what an
    option not given at all holds, but ``--latency-round-to none`` must override the
    default (or a preset's or YAML's value), not leave it."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        if values is None:
            namespace.given_none = {*getattr(namespace, "given_none", ()), self.dest}


def _overrides(args) -> dict:
    from dataclasses import fields

    from ..pipeline import PipelineConfig
    from ..pipeline.config import NONE

    given_none = getattr(args, "given_none", set())
    return {f.name: NONE if f.name in given_none else getattr(args, f.name)
            for f in fields(PipelineConfig)
            if getattr(args, f.name, None) is not None or f.name in given_none}


def _start(args):
    """Config (defaults < preset < YAML < CLI) validated, model loaded, data checked, run
    folder checked and its config written: all before any work."""
    from ..pipeline import DatasetSource, resolve_config, start_run

    cfg = resolve_config(args.preset, **_overrides(args))
    data = DatasetSource.from_config(cfg)
    model = load_model(args, data)
    run = start_run(model, data, cfg, args.out, str(args.checkpoint),
                    keep_original=args.weights is not None)
    return cfg, model, data, run


def _run_args(stage_fields: tuple[str, ...] | None = None, extra=None):
    def add(p):
        p.add_argument("--run", "--run-dir", dest="run",
                       help="run folder (made by prune or collect); under torchrun spell it "
                            "--run-dir, which torchrun's own --run-path does not swallow")
        add_model_args(p)  # a run of your own model class: name it again
        if stage_fields:
            add_pipeline_args(p, only=stage_fields)
        if extra:
            extra(p)
    return add


def _preset_help() -> str:
    """What each preset runs and how long it took on the bundled ResNet-20 (measured by
    benchmarks/preset_table.py from the committed run folders)."""
    import json
    from importlib import resources

    try:
        times = json.loads(resources.files("dwrprune.pipeline").joinpath(
            "preset_times.json").read_text())
    except (OSError, ValueError):
        return "a named recipe (see the README's preset table)"
    return "; ".join(f"{name}: {t['runs']}, then {t['final']} (about {t['total_min']:.0f} "
                     f"min on the bundled ResNet-20, 2 CPU cores, {t.get('precision', 'fp32')})"
                     for name, t in times.items())


def _prune_args(p):
    add_checkpoint_arg(p)
    p.add_argument("--out", help="run folder (resumes if it exists)")
    p.add_argument("--preset", default=None, choices=["quick", "full"], help=_preset_help())
    add_progress_arg(p)
    add_pipeline_args(p)


def _print_final(res: dict, run_path) -> None:
    print(f"chosen point: d={res['point']['d']:.3f} w={res['point']['w']:.3f} "
          f"r={res['point']['r']:.3f} ({res['point']['resolution']}px), removed blocks: "
          f"{', '.join(res['removed_blocks']) or 'none'}")
    latency = ("" if res.get("latency") else
               f", latency b1 {res['original_latency_ms']['1']:.2f} -> "
               f"{res['latency_ms']['1']:.2f} ms")
    print(f"MACs {res['original_macs'] / 1e6:.2f}M -> {res['macs'] / 1e6:.2f}M "
          f"({100 * res['macs_ratio']:.1f}%), params {res['original_params'] / 1e3:.1f}K -> "
          f"{res['params'] / 1e3:.1f}K{latency}")
    if res.get("latency"):
        print(res["latency"]["line"])
    if res.get("max_drop"):
        md = res["max_drop"]
        print(f"drop allowed {md['allowed']:g} points: predicted {md['predicted_drop']:.2f} "
              f"(sd {md['drop_sd']:.2f}), measured {md['val_drop']:.2f} on validation, "
              f"{md['test_drop']:.2f} on test")
    print(f"test accuracy {100 * res['original_test_acc']:.2f}% -> {100 * res['test_acc']:.2f}% "
          f"(val: predicted {100 * res['predicted_val_acc']:.2f}%, measured "
          f"{100 * res['val_acc']:.2f}%)")
    print(f"report: {run_path}/report/report.md; model: {run_path}/final/model.pt")


@command("prune", "the whole pipeline: collect, fit, plan, fine-tune, report", _prune_args,
         ("out",))
def cmd_prune(args) -> int:
    from ..pipeline import DatasetSource, prune, resolve_config

    cfg = resolve_config(args.preset, **_overrides(args))
    model = load_model(args, DatasetSource.from_config(cfg))
    result = prune(model, None, cfg, args.out, checkpoint=str(args.checkpoint),
                   progress=progress(args), keep_original=args.weights is not None)
    _print_final(result.report, result.run.path)
    return 0


@command("collect", "stage 1: collect (d, w, r, accuracy) samples (resumable)", _prune_args,
         ("out",))
def cmd_collect(args) -> int:
    from ..pipeline import collect

    cfg, model, data, run = _start(args)
    store = collect(model, data, cfg, run.path, progress=progress(args))
    print(f"{len(store.samples())} samples in {store.path}")
    return 0


@command("fit", "stage 2: fit the accuracy predictor on a run's samples",
         _run_args(("families", "max_degree", "max_rank", "monotone", "fit_bn_samples",
                    "fit_mixed")),
         ("run",))
def cmd_fit(args) -> int:
    from ..pipeline import Run, fit_run

    run = Run(args.run)
    cfg, _ = run.load_config(**_overrides(args))
    from ..pipeline.fit import fit_summary

    print(fit_summary(*fit_run(run, cfg)))
    return 0


def _plan_extra(p):
    p.add_argument("--budgets", type=_floats, default=None,
                   help="comma-separated MACs budgets (default: the run's budget)")
    p.add_argument("--latency-budgets", type=_floats, default=None,
                   help="comma-separated fractions of the original measured latency")
    p.add_argument("--targets", default=None,
                   help="comma-separated latency targets to plan --latency-budgets (or "
                        "--max-drop) for from the one collection: cpu-b1 (PyTorch, CPU), "
                        "ort-b1 (ONNX Runtime, CPU), cuda-b1 (PyTorch eager, GPU), "
                        "cudagraph-b1 (CUDA graphs); -tN for threads (cpu-b1-t4)")


@command("plan", "stage 3: choose (d, w, r) for one or more budgets",
         _run_args(("lower_bounds", "min_gain_sigmas", "latency_batch", "threads",
                    "device", "runtime", "max_drop", "minimize", "latency_round_to"),
                   _plan_extra), ("run",))
def cmd_plan(args) -> int:
    from ..cost import format_count
    from ..pipeline import open_run, plan_run, run_shrinker
    from ..pipeline.solve import choice_line, parse_targets, plan_targets

    given = sum(x is not None for x in (args.budgets, args.latency_budgets, args.max_drop))
    if given > 1:
        raise DwrpruneError("give one of --budgets (MACs), --latency-budgets or --max-drop")
    targets = parse_targets(args.targets, args.threads or 1) if args.targets else None
    if targets and args.budgets:
        raise DwrpruneError("--targets plans latency: give --latency-budgets or --max-drop "
                            "with it, not --budgets (MACs)")
    cfg, model, _, run = open_run(args.run, **_overrides(args))
    shr = run_shrinker(run, model, cfg)
    if args.latency_budgets or targets or args.max_drop is not None and \
            cfg.minimize == "latency":
        if targets is None:
            targets = [cfg.target()]
        rows = plan_targets(run, shr, cfg, targets, args.latency_budgets, print)
        print(f"{'target':24s} {'budget':>7s} {'ms':>8s} {'measured':>9s} {'speed-up':>8s} "
              f"{'d*':>6s} {'w*':>6s} {'r*':>6s} {'px':>4s} {'MACs':>6s} {'pred acc':>9s} "
              "channels")
        for row in rows:
            x, lat = row["solution"].best, row["latency"]
            m = lat["measured"]
            budget = "-" if lat.get("budget_ms") is None else f"{row['budget']:.3f}"
            ms = "-" if lat.get("budget_ms") is None else f"{lat['budget_ms']:.3f}"
            ratio = m.get("ratio", m["median_ms"] / lat["original_ms"])
            print(f"{lat['target']:24s} {budget:>7s} {ms:>8s} {m['median_ms']:9.3f} "
                  f"{1 / ratio:7.2f}x {x.d:6.3f} {x.w:6.3f} {x.r:6.3f} {x.resolution:4d} "
                  f"{x.macs_ratio:6.3f} {100 * x.predicted:8.2f}% "
                  + (f"to {x.round_to}s" if x.round_to else "as pruned"))
        print(f"written to {run.path / 'plans.json'}")
        return 0
    rows = plan_run(run, shr, cfg, args.budgets)
    if args.max_drop is not None:  # the fewest MACs within the drop
        print(choice_line(rows[0]["solution"]))
        return 0
    print(f"{'budget':>7s} {'d*':>6s} {'w*':>6s} {'r*':>6s} {'px':>4s} {'MACs':>10s} "
          f"{'ratio':>6s} {'params':>9s} {'pred acc':>9s}")
    for row in rows:
        x = row["solution"].best
        print(f"{row['budget']:7.3f} {x.d:6.3f} {x.w:6.3f} {x.r:6.3f} {x.resolution:4d} "
              f"{format_count(x.macs):>10s} {x.macs_ratio:6.3f} "
              f"{format_count(row['params']):>9s} {100 * x.predicted:8.2f}%")
        if row["solution"].decision:
            print(f"        {row['solution'].decision['why']}")
    return 0


@command("finetune", "stage 4: prune to the planned point, fine-tune, test once",
         _run_args(("final_epochs", "final_lr", "final_subset", "distill", "label_smoothing"),
                   add_progress_arg), ("run",))
def cmd_finetune(args) -> int:
    from ..pipeline import final_stage, open_run
    from ..training import distributed

    cfg, model, data, run = open_run(args.run, **_overrides(args))
    res = final_stage(model, data, cfg, run, progress(args))
    if distributed.is_main():
        _print_final(res, run.path)
    return 0


@command("report", "stage 5: write the run's report (JSON, Markdown, plots)", _run_args(),
         ("run",))
def cmd_report(args) -> int:
    from ..pipeline.report import write_report

    write_report(args.run)
    print(f"wrote {args.run}/report/report.md")
    return 0


