"""Subcommands on one model: models, info, train, eval, shrink, export, autobot."""

from __future__ import annotations

import json
import shlex
import sys

from .options import (
    NONNEG,
    POS,
    SIDE,
    THREADS,
    _ints,
    _names,
    add_checkpoint_arg,
    add_data_args,
    add_progress_arg,
    checkpoint_path,
    command,
    data_source,
    print_cost_table,
    progress,
)


# ---------------------------------------------------------------------------- models / info
def _info_args(p):
    g = p.add_mutually_exclusive_group()
    g.add_argument("--model", help="registered model name (fresh weights)")
    g.add_argument("--checkpoint", help="model checkpoint (path or bundled name)")
    p.add_argument("--resolution", type=SIDE, default=None,
                   help="input side in px (default: the checkpoint's, or 32)")
    p.add_argument("--in-channels", type=POS, default=None,
                   help="input channels for --model (default 3)")
    p.add_argument("--num-classes", type=POS, default=10)
    p.add_argument("--threads", type=THREADS, default=1, help="threads for latency")
    p.add_argument("--batch-sizes", type=_ints, default=[1, 64],
                   help="latency batch sizes, comma-separated")
    p.add_argument("--repeats", type=POS, default=20)
    p.add_argument("--no-latency", action="store_true", help="skip latency measurement")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _models_args(p):
    p.add_argument("--torchvision", action="store_true", help="also list tv/NAME models")
    p.add_argument("--timm", action="store_true",
                   help="also list timm/NAME models (needs the timm extra)")


@command("models", "list the registered models", _models_args)
def cmd_models(args) -> int:
    from ..models import get_entry, list_models

    for name in list_models(include_torchvision=args.torchvision, include_timm=args.timm):
        e = get_entry(name)
        print(f"{name:28s} min {e.min_resolution:3d}px  {e.description}")
    return 0


@command("info", "MACs, parameters and CPU latency of a model at a resolution", _info_args)
def cmd_info(args) -> int:
    from ..cost import format_count, machine_stamp, measure_latency
    from ..io.spec import spec_of
    from ..pretrained import DEFAULT
    from ..tasks import model_axes, model_info

    batches = () if args.no_latency else tuple(args.batch_sizes)
    rep, name, in_ch, model = model_info(
        args.model, checkpoint_path(args.checkpoint or DEFAULT), args.resolution,
        args.in_channels, args.num_classes, batches if args.json else (), args.threads,
        args.repeats)
    spec = None if args.model else spec_of(model)
    axes = model_axes(args.model or model, args.resolution, in_ch, args.num_classes)
    if args.json:
        print(json.dumps({"model": name, **rep.as_dict(), "axes": axes,
                          "contract": spec.contract if spec else None,
                          "machine": machine_stamp()}))
        return 0
    res = rep.resolution
    print(f"model       {name}  ({in_ch}x{res}x{res} input)")
    if spec is not None:
        print(f"feed it     {spec.contract_line()}")
    print(f"MACs        {format_count(rep.macs)}  ({rep.macs:,})")
    print(f"params      {format_count(rep.params)}  ({rep.params:,})")
    d, w, r = axes["depth"], axes["width"], axes["resolution"]
    print(f"axes        depth: {d['blocks']} removable blocks ({', '.join(d['kinds']) or '-'})"
          f"{' (' + d['why'] + ')' if d['why'] else ''}; "
          f"width: {w['groups']} channel groups{' (' + w['why'] + ')' if w['why'] else ''}; "
          f"resolution: {r['min']}..{r['base']} px", flush=True)
    for b in batches:  # the slow part last, each line as soon as it is measured
        lat = measure_latency(model, res, b, in_ch, args.threads, repeats=args.repeats)
        print(f"latency     batch {lat.batch_size:3d}: {lat.median_ms:8.2f} ms median "
              f"({lat.threads} thread{'s' if lat.threads > 1 else ''}, {lat.repeats} repeats)",
              flush=True)
    return 0


# ---------------------------------------------------------------------------- train / eval
def _train_args(p):
    p.add_argument("--model", help="registered model name")
    add_data_args(p)
    p.add_argument("--resolution", type=SIDE, default=None, help="input side (default native)")
    p.add_argument("--epochs", type=POS, default=15)
    p.add_argument("--steps", type=POS, default=None, help="train this many batches instead")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--subset", type=POS, default=None, help="train on this many samples")
    p.add_argument("--seed", type=NONNEG, default=0)
    p.add_argument("--no-augment", action="store_true",
                   help="train without random crops and flips")
    p.add_argument("--precision", default="auto", help="auto | fp32 | bf16 | fp16 (autocast; "
                   "fp16 on a GPU only; auto, the default: bf16 where the device computes it "
                   "natively, else fp32)")
    p.add_argument("--channels-last", action="store_true",
                   help="train in channels_last memory layout")
    p.add_argument("--init", default=None, metavar="CHECKPOINT",
                   help="start from this unpruned checkpoint's weights (a warm restart with a "
                        "new schedule) instead of from scratch")
    p.add_argument("--out", help="output folder (resumes if it has last.pt)")
    add_progress_arg(p)


@command("train", "train a registered model, from scratch or --init weights (resumable)",
         _train_args,
         ("model", "out"))
def cmd_train(args) -> int:
    from ..tasks import train_model
    from ..training import distributed
    from ..training.engine import (
        TrainConfig,
        check_precision,
        compute_device,
        resolve_precision,
    )

    check_precision(args.precision, compute_device())
    cfg = TrainConfig(epochs=args.epochs, steps=args.steps, lr=args.lr,
                      weight_decay=args.weight_decay, label_smoothing=args.label_smoothing,
                      seed=args.seed, precision=resolve_precision(args.precision,
                                                                  compute_device()),
                      channels_last=args.channels_last)
    card = train_model(args.model, data_source(args), args.out, resolution=args.resolution,
                       config=cfg, subset=args.subset, augment=False if args.no_augment
                       else None, progress=progress(args), init=args.init,
                       command="dwrprune " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    if distributed.is_main():
        print(f"test accuracy {card['test_acc'] * 100:.2f}%  -> {args.out}/model.pt")
    return 0


def _eval_args(p):
    add_checkpoint_arg(p)
    add_data_args(p)
    p.add_argument("--split", default="test", choices=["train", "val", "trainval", "test"])
    p.add_argument("--json", action="store_true")


@command("eval", "evaluate a checkpoint on a dataset split", _eval_args)
def cmd_eval(args) -> int:
    from ..tasks import evaluate_checkpoint
    from ..training import distributed

    ev = evaluate_checkpoint(checkpoint_path(args.checkpoint), data_source(args), args.split,
                             progress=progress(args))
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
    from ..pruning.criteria import CHANNEL_CRITERIA, DEPTH_CRITERIA

    add_checkpoint_arg(p)
    p.add_argument("--depth", type=float, default=1.0, help="fraction of removable blocks kept")
    p.add_argument("--width", type=float, default=1.0, help="fraction of channels kept")
    p.add_argument("--resolution", type=float, default=1.0, help="fraction of input side kept")
    p.add_argument("--out", help="output checkpoint path (.pt)")
    p.add_argument("--transitions", action="store_true",
                   help="allow replacing stage-transition blocks by their projection shortcut")
    p.add_argument("--blocks", default=None, help="comma-separated removable block names")
    p.add_argument("--ignore", type=_names, default=None, help="layers left exactly as they "
                   "are, by module name (e.g. fc,layer4.2)")
    p.add_argument("--depth-criterion", default="weight_norm", choices=list(DEPTH_CRITERIA))
    p.add_argument("--channel-criterion", default="l1", choices=list(CHANNEL_CRITERIA))
    p.add_argument("--round-to", type=POS, default=None, help="round channel counts to this")
    add_data_args(p, default=None)
    p.add_argument("--recal-batches", type=NONNEG, default=50,
                   help="training batches for BatchNorm re-calibration (0: none)")
    p.add_argument("--threads", type=THREADS, default=1, help="threads for latency")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")


@command("shrink", "prune a checkpoint to a (depth, width, resolution) point", _shrink_args,
         ("out",))
def cmd_shrink(args) -> int:
    from ..tasks import shrink_checkpoint

    before, after, res, shr = shrink_checkpoint(
        checkpoint_path(args.checkpoint), args.depth, args.width, args.resolution, args.out,
        data=data_source(args), force=args.force, recal_batches=args.recal_batches,
        threads=args.threads, blocks=args.blocks.split(",") if args.blocks else None,
        transitions=args.transitions, depth_criterion=args.depth_criterion,
        channel_criterion=args.channel_criterion, round_to=args.round_to,
        ignored_layers=args.ignore)
    print_cost_table([("original", before), ("pruned", after)])
    removed = [b["name"] for b in res.spec["arch"]["removed_blocks"]]
    print(f"removed {len(removed)}/{len(shr.blocks)} blocks: {', '.join(removed) or '-'}")
    print(f"MACs x{before.macs / after.macs:.2f} smaller; latency b1 x"
          f"{before.latency[0].median_ms / after.latency[0].median_ms:.2f} faster")
    print(f"wrote {args.out}")
    return 0


def _export_args(p):
    add_checkpoint_arg(p)
    p.add_argument("--onnx", help="output .onnx path")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: exporter's)")
    p.add_argument("--force", action="store_true", help="overwrite --onnx if it exists")


@command("export", "export a checkpoint to ONNX", _export_args, ("onnx",))
def cmd_export(args) -> int:
    from ..tasks import export_checkpoint

    out, spec = export_checkpoint(checkpoint_path(args.checkpoint), args.onnx,
                                  opset=args.opset, force=args.force)
    data = out.with_name(out.name + ".data")
    if data.exists():
        print(f"the weights are in {data}, beside it: keep the two files together")
    print(f"wrote {out} (input 'input' N x {spec.in_channels} x {spec.resolution} x "
          f"{spec.resolution})")
    return 0


# ---------------------------------------------------------------------------- autobot
def _autobot_args(p):
    add_checkpoint_arg(p)
    add_data_args(p)
    p.add_argument("--budget", type=float, help="target fraction of MACs")
    p.add_argument("--ignore", type=_names, default=None, help="layers left exactly as they "
                   "are, by module name (e.g. fc,layer4.2)")
    p.add_argument("--out", help="output checkpoint path (.pt)")
    p.add_argument("--steps", type=POS, default=200, help="mask training batches")
    p.add_argument("--beta", type=float, default=6.0)
    p.add_argument("--gamma", type=float, default=0.2)
    p.add_argument("--lr", type=float, default=0.6)
    p.add_argument("--seed", type=NONNEG, default=0)
    p.add_argument("--recal-batches", type=NONNEG, default=20,
                   help="BatchNorm re-calibration batches after pruning (0: none)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    add_progress_arg(p)


@command("autobot", "learned per-layer width (AutoBot) to a MACs budget", _autobot_args,
         ("budget", "out"))
def cmd_autobot(args) -> int:
    from ..pruning.autobot import AutoBotConfig
    from ..tasks import autobot_checkpoint

    cfg = AutoBotConfig(beta=args.beta, gamma=args.gamma, lr=args.lr, steps=args.steps,
                        seed=args.seed)
    before, after, _, acc0, acc1 = autobot_checkpoint(
        checkpoint_path(args.checkpoint), data_source(args), args.budget, args.out, config=cfg,
        force=args.force, recal_batches=args.recal_batches, progress=progress(args),
        ignored_layers=args.ignore)
    print_cost_table([("original", before), ("autobot", after)])
    print(f"MACs {100 * after.macs / before.macs:.1f}% of the original; val accuracy "
          f"{100 * acc0:.2f}% -> {100 * acc1:.2f}% (before fine-tuning)")
    print(f"wrote {args.out}")
    return 0


