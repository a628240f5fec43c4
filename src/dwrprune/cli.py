"""The ``dwrprune`` command line.

Each subcommand is a small function registered with :func:`command`.  Every option can also
come from a YAML file (``--config FILE``; keys are option names with dashes or underscores);
options given on the command line win.  User mistakes end with a one-line message and exit
code 2.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from . import __version__, distributed
from .checkpoint import save_json
from .errors import DwrpruneError

_COMMANDS: dict[str, tuple[Callable, Callable, str]] = {}


def command(name: str, help: str):
    """Register ``fn(args)`` as subcommand ``name``; ``fn.add_args(parser)`` adds options."""

    def wrap(fn):
        _COMMANDS[name] = (fn, getattr(fn, "add_args", lambda p: None), help)
        return fn

    return wrap


def with_args(add: Callable[[argparse.ArgumentParser], None]):
    def wrap(fn):
        fn.add_args = add
        return fn

    return wrap


# ---------------------------------------------------------------------------- shared options
def writable_output(path: str, force: bool) -> Path:
    """An output file path, refusing to overwrite an existing file without --force."""
    out = Path(path)
    if out.exists() and not force:
        raise DwrpruneError(f"{out} exists; pass --force to overwrite it")
    return out


def args_dict(args: argparse.Namespace) -> dict:
    """The resolved options as plain data (for the config JSON a run folder keeps)."""
    return {k: v for k, v in vars(args).items() if k != "func"}


def add_data_args(p: argparse.ArgumentParser, default: str | None = "fashion-mnist") -> None:
    p.add_argument("--data", default=default, help="dataset name (fashion-mnist, cifar10, "
                   "cifar100, imagefolder, synthetic)")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: Debian's "
                   "/usr/share/datasets/fashion-mnist for fashion-mnist)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of the training set held out for validation")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")


def add_checkpoint_arg(p: argparse.ArgumentParser, required: bool = False) -> None:
    from .pretrained import DEFAULT

    p.add_argument("--checkpoint", default=None if required else DEFAULT, required=required,
                   help=f"model checkpoint path, or a bundled name (default: {DEFAULT})")


def load_checkpoint_model(checkpoint):
    from .checkpoint import load
    from .pretrained import resolve

    return load(resolve(checkpoint))


def build_loader(args, split: str, resolution: int | None, shuffle: bool = False,
                 subset: int | None = None, seed: int = 0, augment: bool | None = None):
    from .data import create_dataset, make_loader

    ds = create_dataset(args.data, split, data_dir=args.data_dir, resolution=resolution,
                        val_fraction=args.val_fraction, subset=subset, augment=augment)
    return make_loader(ds, args.batch_size, shuffle=shuffle, seed=seed,
                       num_workers=args.workers)


def check_data_matches(spec: dict, info) -> None:
    m = spec["model"]
    if info.num_classes and info.num_classes != m["num_classes"]:
        raise DwrpruneError(f"dataset {info.name!r} has {info.num_classes} classes but the "
                            f"model outputs {m['num_classes']}")
    if info.in_channels != m["in_channels"]:
        raise DwrpruneError(f"dataset {info.name!r} has {info.in_channels} input channels but "
                            f"the model expects {m['in_channels']}")


# ---------------------------------------------------------------------------- models / info
def _models_args(p):
    p.add_argument("--torchvision", action="store_true", help="also list tv/NAME models")


@command("models", "list the registered models")
@with_args(_models_args)
def cmd_models(args) -> int:
    from .models import get_entry, list_models

    for name in list_models(include_torchvision=args.torchvision):
        e = get_entry(name)
        print(f"{name:28s} min {e.min_resolution:3d}px  {e.description}")
    return 0


def _info_args(p):
    g = p.add_mutually_exclusive_group()
    g.add_argument("--model", help="registered model name (fresh weights)")
    g.add_argument("--checkpoint", help="model checkpoint (path or bundled name)")
    p.add_argument("--resolution", type=int, default=None,
                   help="input side in px (default: the checkpoint's, or 32)")
    p.add_argument("--in-channels", type=int, default=None,
                   help="input channels for --model (default 3)")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="threads for latency")
    p.add_argument("--batch-sizes", default="1,64", help="latency batch sizes, comma-separated")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--no-latency", action="store_true", help="skip latency measurement")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


@command("info", "MACs, parameters and CPU latency of a model at a resolution")
@with_args(_info_args)
def cmd_info(args) -> int:
    from .cost import cost_report, format_count, machine_stamp
    from .models import check_resolution, create_model

    if args.model:
        in_ch = args.in_channels or 3
        model = create_model(args.model, num_classes=args.num_classes, in_channels=in_ch)
        name, res = args.model, args.resolution or 32
    else:
        from .pretrained import DEFAULT

        model = load_checkpoint_model(args.checkpoint or DEFAULT)
        spec = model.dwrprune_spec
        name, in_ch = spec["model"]["name"], spec["model"]["in_channels"]
        res = args.resolution or spec["input"]["resolution"]
    check_resolution(name, res)
    batches = tuple(int(b) for b in args.batch_sizes.split(",")) if not args.no_latency else ()
    rep = cost_report(model, res, in_ch, batches, args.threads, args.repeats)
    if args.json:
        print(json.dumps({"model": name, **rep.as_dict(), "machine": machine_stamp()}))
        return 0
    print(f"model       {name}  ({in_ch}x{res}x{res} input)")
    print(f"MACs        {format_count(rep.macs)}  ({rep.macs:,})")
    print(f"params      {format_count(rep.params)}  ({rep.params:,})")
    for lat in rep.latency:
        print(f"latency     batch {lat.batch_size:3d}: {lat.median_ms:8.2f} ms median "
              f"({lat.threads} thread{'s' if lat.threads > 1 else ''}, {lat.repeats} repeats)")
    return 0


# ---------------------------------------------------------------------------- train / eval
def _train_args(p):
    p.add_argument("--model", required=True, help="registered model name")
    add_data_args(p)
    p.add_argument("--resolution", type=int, default=None, help="input side (default native)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--steps", type=int, default=None, help="train this many batches instead")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--subset", type=int, default=None, help="train on this many samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-augment", action="store_true",
                   help="train without random crops and flips")
    p.add_argument("--out", required=True, help="output folder (resumes if it has last.pt)")
    p.add_argument("--no-progress", action="store_true")


@command("train", "train a registered model from scratch (resumable)")
@with_args(_train_args)
def cmd_train(args) -> int:
    import torch

    from .checkpoint import make_spec, save_json, save_model
    from .engine import TrainConfig, evaluate, train
    from .models import check_resolution, create_model

    torch.manual_seed(args.seed)
    train_loader = build_loader(args, "train", args.resolution, shuffle=True,
                                subset=args.subset, seed=args.seed,
                                augment=False if args.no_augment else None)
    info = train_loader.dataset.info
    res = args.resolution or info.resolution
    check_resolution(args.model, res)
    model = create_model(args.model, num_classes=info.num_classes, in_channels=info.in_channels)
    spec = make_spec(args.model, info.num_classes, info.in_channels, res, info.name,
                     info.mean, info.std)
    cfg = TrainConfig(epochs=args.epochs, steps=args.steps, lr=args.lr,
                      weight_decay=args.weight_decay, label_smoothing=args.label_smoothing,
                      seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command_line = "dwrprune " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    main_rank = distributed.is_main()  # under torchrun only rank 0 writes
    if main_rank:
        save_json(out / "config.json", {"command": command_line, **args_dict(args)})
    val_loader = build_loader(args, "val", res)
    result = train(model, train_loader, cfg, val_loader=val_loader, checkpoint_dir=out,
                   spec=spec, progress=not args.no_progress)
    test = evaluate(model, build_loader(args, "test", res), progress=not args.no_progress)
    meta = {"command": command_line, "seed": args.seed, "test_acc": test.accuracy,
            "test_loss": test.loss, "val_acc": result.history[-1].get("val_acc"),
            "epochs": len(result.history), "train_seconds": result.seconds,
            "dwrprune_version": __version__, "torch": torch.__version__,
            "processes": distributed.world_size()}
    if not main_rank:
        return 0
    save_model(out / "model.pt", model, spec, meta)
    save_json(out / "history.json", result.history)
    save_json(out / "card.json", meta)
    print(f"test accuracy {test.accuracy * 100:.2f}%  -> {out / 'model.pt'}")
    return 0


def _eval_args(p):
    add_checkpoint_arg(p)
    add_data_args(p)
    p.add_argument("--split", default="test", choices=["train", "val", "trainval", "test"])
    p.add_argument("--json", action="store_true")


@command("eval", "evaluate a checkpoint on a dataset split")
@with_args(_eval_args)
def cmd_eval(args) -> int:
    from .engine import evaluate

    model = load_checkpoint_model(args.checkpoint)
    spec = model.dwrprune_spec
    loader = build_loader(args, args.split, spec["input"]["resolution"])
    check_data_matches(spec, loader.dataset.info)
    ev = evaluate(model, loader, progress=distributed.is_main())
    if not distributed.is_main():
        return 0
    if args.json:
        print(json.dumps({"split": args.split, "accuracy": ev.accuracy, "loss": ev.loss,
                          "count": ev.count}))
    else:
        print(f"{args.split} accuracy {ev.accuracy * 100:.2f}%  loss {ev.loss:.4f}  "
              f"({ev.count} images)")
    return 0


# ---------------------------------------------------------------------------- shrink / export
def _shrink_args(p):
    add_checkpoint_arg(p)
    p.add_argument("--depth", type=float, default=1.0, help="fraction of removable blocks kept")
    p.add_argument("--width", type=float, default=1.0, help="fraction of channels kept")
    p.add_argument("--resolution", type=float, default=1.0, help="fraction of input side kept")
    p.add_argument("--out", required=True, help="output checkpoint path (.pt)")
    p.add_argument("--transitions", action="store_true",
                   help="allow replacing stage-transition blocks by their projection shortcut")
    p.add_argument("--blocks", default=None, help="comma-separated removable block names")
    p.add_argument("--depth-criterion", default="weight_norm", choices=["weight_norm", "loss"])
    p.add_argument("--channel-criterion", default="l1",
                   choices=["l1", "l2", "bn_scale", "taylor", "random", "autobot"])
    p.add_argument("--round-to", type=int, default=None, help="round channel counts to this")
    add_data_args(p, default=None)
    p.add_argument("--recal-batches", type=int, default=50,
                   help="training batches for BatchNorm re-calibration (0: none)")
    p.add_argument("--threads", type=int, default=1, help="threads for latency")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")


def print_cost_table(rows: list[tuple[str, object]]) -> None:
    from .cost import format_count

    print(f"{'':10s} {'MACs':>12s} {'params':>12s} {'res':>5s} {'lat b1 ms':>10s} "
          f"{'lat b64 ms':>11s}")
    for label, rep in rows:
        lat = {x.batch_size: x.median_ms for x in rep.latency}
        print(f"{label:10s} {format_count(rep.macs):>12s} {format_count(rep.params):>12s} "
              f"{rep.resolution:5d} {lat.get(1, float('nan')):10.2f} "
              f"{lat.get(64, float('nan')):11.2f}")


@command("shrink", "prune a checkpoint to a (depth, width, resolution) point")
@with_args(_shrink_args)
def cmd_shrink(args) -> int:
    from .checkpoint import save_model
    from .cost import cost_report
    from .shrink import Shrinker

    out = writable_output(args.out, args.force)
    model = load_checkpoint_model(args.checkpoint)
    spec = model.dwrprune_spec
    args.data = args.data or spec["input"].get("dataset")
    data_criterion = args.depth_criterion == "loss" or args.channel_criterion in (
        "taylor", "autobot")
    need_data = args.recal_batches > 0 or data_criterion
    data = {}
    recal = None
    if need_data:
        if not args.data:
            raise DwrpruneError("pass --data (the checkpoint names no dataset) or "
                                "--recal-batches 0 with data-free criteria")
        res0 = spec["input"]["resolution"]
        data = {"train_loader": build_loader(args, "train", res0, shuffle=True),
                "val_loader": build_loader(args, "val", res0)}
        check_data_matches(spec, data["train_loader"].dataset.info)
        if args.recal_batches > 0:
            def recal(res):
                return build_loader(args, "train", res, shuffle=True)
    blocks = args.blocks.split(",") if args.blocks else None
    shr = Shrinker(model, blocks=blocks, transitions=args.transitions,
                   depth_criterion=args.depth_criterion,
                   channel_criterion=args.channel_criterion, round_to=args.round_to,
                   criterion_data=data if data_criterion else {})
    res = shr.shrink(args.depth, args.width, args.resolution, recalibrate=recal,
                     recal_batches=args.recal_batches)
    before = cost_report(model, spec["input"]["resolution"], threads=args.threads)
    after = cost_report(res.model, res.spec["input"]["resolution"], threads=args.threads)
    print_cost_table([("original", before), ("pruned", after)])
    removed = [b["name"] for b in res.spec["arch"]["removed_blocks"]]
    print(f"removed {len(removed)}/{len(shr.blocks)} blocks: {', '.join(removed) or '-'}")
    print(f"MACs x{before.macs / after.macs:.2f} smaller; latency b1 x"
          f"{before.latency[0].median_ms / after.latency[0].median_ms:.2f} faster")
    save_model(out, res.model, res.spec, {"source": str(args.checkpoint),
                                          "macs": res.macs, "params": res.params})
    print(f"wrote {out}")
    return 0


def _export_args(p):
    add_checkpoint_arg(p)
    p.add_argument("--onnx", required=True, help="output .onnx path")
    p.add_argument("--opset", type=int, default=None)


@command("export", "export a checkpoint to ONNX")
@with_args(_export_args)
def cmd_export(args) -> int:
    from .export import export_onnx

    model = load_checkpoint_model(args.checkpoint)
    spec = model.dwrprune_spec
    export_onnx(model, args.onnx, spec["input"]["resolution"], spec["model"]["in_channels"],
                args.opset)
    print(f"wrote {args.onnx} (input 'input' N x {spec['model']['in_channels']} x "
          f"{spec['input']['resolution']} x {spec['input']['resolution']})")
    return 0


# ---------------------------------------------------------------------------- pipeline
def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}") from None


def _points(text: str) -> list[list[float]]:
    pts = [_floats(p) for p in str(text).split(";") if p.strip()]
    if any(len(p) != 3 for p in pts):
        raise argparse.ArgumentTypeError(f"expected 'd,w,r;d,w,r;...', got {text!r}")
    return pts


def _opt(kind):
    def parse(text: str):
        return None if str(text).lower() in ("none", "") else kind(text)
    parse.__name__ = kind.__name__
    return parse


_FIELD_TYPES = {"list[float]": _floats, "list[list[float]]": _points,
                "list[float] | None": _opt(_floats),
                "list[str]": lambda t: [x for x in str(t).split(",") if x],
                "int": int, "float": float, "str": str, "int | None": _opt(int),
                "float | None": _opt(float), "str | None": _opt(str)}


def add_pipeline_args(p: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    """One option per PipelineConfig field (default None: 'not given, use config/preset')."""
    from dataclasses import MISSING, fields

    from .pipeline import PipelineConfig

    for f in fields(PipelineConfig):
        if only is not None and f.name not in only:
            continue
        default = f.default if f.default is not MISSING else f.default_factory()
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                           help=f"(default {default})")
        else:
            p.add_argument(flag, type=_FIELD_TYPES[f.type], default=None,
                           help=f"(default {default})")


def _pipeline_overrides(args) -> dict:
    from dataclasses import fields

    from .pipeline import PipelineConfig

    return {f.name: getattr(args, f.name) for f in fields(PipelineConfig)
            if getattr(args, f.name, None) is not None}


def _start_run(args):
    """Resolve config (defaults < preset < YAML < CLI), load the model, check the data."""
    from .pipeline import DatasetSource, Run, resolve_config

    cfg = resolve_config(args.preset, **_pipeline_overrides(args))
    model = load_checkpoint_model(args.checkpoint)
    data = DatasetSource.from_config(cfg)
    check_data_matches(model.dwrprune_spec, data.info)
    run = Run(args.out)
    run.save_config(cfg, str(args.checkpoint))
    return cfg, model, data, run


def _open_run(args, **overrides):
    from .pipeline import DatasetSource, Run

    run = Run(args.run)
    cfg, checkpoint = run.load_config(**overrides)
    model = load_checkpoint_model(checkpoint)
    data = DatasetSource.from_config(cfg)
    return cfg, model, data, run


def _run_args(p, stage_fields: tuple[str, ...] | None = None):
    p.add_argument("--run", "--run-dir", dest="run", required=True,
                   help="run folder (made by prune or collect); under torchrun spell it "
                        "--run-dir, which torchrun's own --run-path does not swallow")
    if stage_fields:
        add_pipeline_args(p, only=stage_fields)


def _prune_args(p):
    add_checkpoint_arg(p)
    p.add_argument("--out", required=True, help="run folder (resumes if it exists)")
    p.add_argument("--preset", default=None, choices=["quick", "full"])
    p.add_argument("--no-progress", action="store_true")
    add_pipeline_args(p)


def _print_final(res: dict, run_path) -> None:
    print(f"chosen point: d={res['point']['d']:.3f} w={res['point']['w']:.3f} "
          f"r={res['point']['r']:.3f} ({res['point']['resolution']}px), removed blocks: "
          f"{', '.join(res['removed_blocks']) or 'none'}")
    print(f"MACs {res['original_macs'] / 1e6:.2f}M -> {res['macs'] / 1e6:.2f}M "
          f"({100 * res['macs_ratio']:.1f}%), params {res['original_params'] / 1e3:.1f}K -> "
          f"{res['params'] / 1e3:.1f}K, latency b1 {res['original_latency_ms']['1']:.2f} -> "
          f"{res['latency_ms']['1']:.2f} ms")
    print(f"test accuracy {100 * res['original_test_acc']:.2f}% -> {100 * res['test_acc']:.2f}% "
          f"(val: predicted {100 * res['predicted_val_acc']:.2f}%, measured "
          f"{100 * res['val_acc']:.2f}%)")
    print(f"report: {run_path}/report/report.md; model: {run_path}/final/model.pt")


@command("prune", "the whole pipeline: collect, fit, plan, fine-tune, report")
@with_args(_prune_args)
def cmd_prune(args) -> int:
    from .pipeline import prune

    cfg, model, data, run = _start_run(args)
    res = prune(model, data, cfg, run.path, checkpoint=str(args.checkpoint),
                progress=not args.no_progress)
    _print_final(res, run.path)
    return 0


@command("collect", "stage 1: collect (d, w, r, accuracy) samples (resumable)")
@with_args(_prune_args)
def cmd_collect(args) -> int:
    from .pipeline import collect

    cfg, model, data, run = _start_run(args)
    store = collect(model, data, cfg, run.path, progress=not args.no_progress)
    print(f"{len(store.samples())} samples in {store.path}")
    return 0


_FIT_FIELDS = ("families", "max_degree", "max_rank", "monotone", "fit_bn_samples")


@command("fit", "stage 2: fit the accuracy predictor on a run's samples")
@with_args(lambda p: _run_args(p, _FIT_FIELDS))
def cmd_fit(args) -> int:
    from .pipeline import fit_samples

    cfg, _, _, run = _open_run(args, **_pipeline_overrides(args))
    pred, holdout = fit_samples(run.store(), cfg)
    run.save_predictor(pred, holdout)
    print(f"predictor {pred.poly.name()}: LOO RMSE {100 * pred.loo_rmse:.2f} points, "
          f"MAE {100 * pred.loo_mae:.2f}; monotone: {pred.monotone_report['monotone']}")
    if holdout.get("count"):
        print(f"held-out mixed points ({holdout['count']}): MAE {100 * holdout['mae']:.2f} "
              "points")
    return 0


def _plan_args(p):
    _run_args(p, ("lower_bounds",))
    p.add_argument("--budgets", type=_floats, default=None,
                   help="comma-separated budgets (default: the run's budget)")


@command("plan", "stage 3: choose (d, w, r) for one or more budgets")
@with_args(_plan_args)
def cmd_plan(args) -> int:
    from .cost import format_count
    from .pipeline import solve_budget

    cfg, model, _, run = _open_run(args, **_pipeline_overrides(args))
    pred, _ = run.predictor()
    shr = run.shrinker(model, cfg)
    budgets = args.budgets or [cfg.budget]
    rows = []
    print(f"{'budget':>7s} {'d*':>6s} {'w*':>6s} {'r*':>6s} {'px':>4s} {'MACs':>10s} "
          f"{'ratio':>6s} {'params':>9s} {'pred acc':>9s}")
    for b in budgets:
        sol = solve_budget(pred, shr, b, cfg.lower_bounds)
        x = sol.best
        params = shr.shrink(x.d, x.w, x.r).params
        rows.append({"budget": b, "solution": sol.to_dict(), "params": params})
        print(f"{b:7.3f} {x.d:6.3f} {x.w:6.3f} {x.r:6.3f} {x.resolution:4d} "
              f"{format_count(x.macs):>10s} {x.macs_ratio:6.3f} {format_count(params):>9s} "
              f"{100 * x.predicted:8.2f}%")
    save_json(run.path / "plans.json", rows)
    chosen = next((r for r in rows if abs(r["budget"] - cfg.budget) < 1e-12), None)
    if chosen is None and len(rows) == 1:
        chosen = rows[0]
    if chosen is not None:
        from .pipeline import exact_cost_grid

        grid = exact_cost_grid(shr, chosen["solution"]["best"]["d"], pred.lower)
        save_json(run.path / "plan.json", {"budget": chosen["budget"],
                                           "solution": chosen["solution"], "grid": grid})
    return 0


_FINAL_FIELDS = ("final_epochs", "final_lr", "final_subset", "distill", "label_smoothing")


@command("finetune", "stage 4: prune to the planned point, fine-tune, test once")
@with_args(lambda p: (_run_args(p, _FINAL_FIELDS), p.add_argument("--no-progress",
                                                                  action="store_true")))
def cmd_finetune(args) -> int:
    from .pipeline import finetune_final
    from .solver import Candidate, ContinuousOptimum, Solution

    cfg, model, data, run = _open_run(args, **_pipeline_overrides(args))
    body = run.plan()["solution"]
    sol = Solution(body["budget"], body["base_macs"], ContinuousOptimum(**body["continuous"]),
                   Candidate(**body["best"]), [Candidate(**c) for c in body["runners_up"]])
    res = finetune_final(model, data, cfg, run.shrinker(model, cfg, data), sol, run.path,
                         progress=not args.no_progress)
    if distributed.is_main():
        _print_final(res, run.path)
    return 0


@command("report", "stage 5: write the run's report (JSON, Markdown, plots)")
@with_args(lambda p: _run_args(p))
def cmd_report(args) -> int:
    from .report import write_report

    write_report(args.run)
    print(f"wrote {args.run}/report/report.md")
    return 0


# ---------------------------------------------------------------------------- autobot
def _autobot_args(p):
    add_checkpoint_arg(p)
    add_data_args(p)
    p.add_argument("--budget", type=float, required=True, help="target fraction of MACs")
    p.add_argument("--out", required=True, help="output checkpoint path (.pt)")
    p.add_argument("--steps", type=int, default=200, help="mask training batches")
    p.add_argument("--beta", type=float, default=6.0)
    p.add_argument("--gamma", type=float, default=0.2)
    p.add_argument("--lr", type=float, default=0.6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--recal-batches", type=int, default=20,
                   help="BatchNorm re-calibration batches after pruning (0: none)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--no-progress", action="store_true")


@command("autobot", "learned per-layer width (AutoBot) to a MACs budget")
@with_args(_autobot_args)
def cmd_autobot(args) -> int:
    from .autobot import AutoBotConfig, autobot_prune
    from .checkpoint import save_model
    from .cost import cost_report
    from .engine import evaluate

    out = writable_output(args.out, args.force)
    model = load_checkpoint_model(args.checkpoint)
    spec = model.dwrprune_spec
    res = spec["input"]["resolution"]
    train_loader = build_loader(args, "train", res, shuffle=True, seed=args.seed)
    check_data_matches(spec, train_loader.dataset.info)
    cfg = AutoBotConfig(beta=args.beta, gamma=args.gamma, lr=args.lr, steps=args.steps,
                        seed=args.seed)
    result = autobot_prune(model, train_loader, args.budget, cfg,
                           progress=not args.no_progress, recal_loader=train_loader,
                           recal_batches=args.recal_batches)
    val = build_loader(args, "val", res)
    before, after = cost_report(model, res), cost_report(result.model, res)
    print_cost_table([("original", before), ("autobot", after)])
    print(f"MACs {100 * after.macs / before.macs:.1f}% of the original; val accuracy "
          f"{100 * evaluate(model, val).accuracy:.2f}% -> "
          f"{100 * evaluate(result.model, val).accuracy:.2f}% (before fine-tuning)")
    save_model(out, result.model, result.spec, {"source": str(args.checkpoint),
                                                "macs": result.macs})
    print(f"wrote {out}")
    return 0


# ---------------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dwrprune", description="Prune a CNN along depth, width and resolution.")
    parser.add_argument("--version", action="version", version=f"dwrprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (fn, add, help_) in _COMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("--config", default=None, help="YAML file of option values")
        add(sp)
        sp.set_defaults(func=fn)
    return parser


def _config_path(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--config="):
            return a.split("=", 1)[1]
    return None


def _apply_yaml(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; values from ``--config FILE`` become defaults the command line overrides."""
    path = _config_path(argv)
    name = next((a for a in argv if not a.startswith("-")), None)
    sub = parser._subparsers._group_actions[0].choices.get(name) if name else None  # noqa: SLF001
    if path is None or sub is None:
        return parser.parse_args(argv)
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise DwrpruneError(f"cannot read config {path}: {e}") from None
    if not isinstance(values, dict):
        raise DwrpruneError(f"config {path} must be a mapping of option: value")
    known = {a.dest for a in sub._actions}  # noqa: SLF001
    clean = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(clean) - known)
    if unknown:
        raise DwrpruneError(f"config {path}: unknown options {unknown} for 'dwrprune {name}'")
    sub.set_defaults(**clean)
    for a in sub._actions:  # noqa: SLF001 - a YAML value satisfies a required option
        if a.dest in clean:
            a.required = False
    return parser.parse_args(argv)


DISTRIBUTED_COMMANDS = ("train", "finetune", "eval")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = _apply_yaml(parser, argv)
        if distributed.launched():
            if args.command not in DISTRIBUTED_COMMANDS:
                raise DwrpruneError(
                    f"`dwrprune {args.command}` does not run under torchrun; data-parallel "
                    f"commands: {', '.join(DISTRIBUTED_COMMANDS)} (sample collection spreads "
                    "over machines with --executor ray instead)")
            distributed.init()
        return int(args.func(args) or 0)
    except DwrpruneError as e:
        print(f"dwrprune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dwrprune: interrupted; finished work is saved", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
