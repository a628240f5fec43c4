"""What every subcommand shares: the command registry, the one-line-error parser, option
types with ranges, and the data / checkpoint / progress options."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from ..errors import DwrpruneError

_COMMANDS: dict[str, tuple[Callable, Callable, str, tuple[str, ...]]] = {}


def command(name: str, help: str, add: Callable = lambda p: None,
            required: tuple[str, ...] = ()):
    """Register ``fn(args)`` as subcommand ``name``; ``add(parser)`` adds its options;
    ``required``: options that must come from the command line or the YAML file."""

    def wrap(fn):
        _COMMANDS[name] = (fn, add, help, required)
        return fn

    return wrap


class Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line on stderr and exit code 2 (no usage dump)."""

    def error(self, message: str):
        raise DwrpruneError(message)


# ---------------------------------------------------------------------------- option types
def _ranged(kind, low=None, what="", high=None):
    def parse(text):
        try:
            v = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {what or kind.__name__}, got "
                                             f"{text!r}") from None
        if low is not None and v < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {v}")
        if high is not None and v > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}, got {v}")
        return v
    parse.__name__ = what or kind.__name__
    return parse


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        vals = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated whole numbers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected numbers >= 1, got {text!r}")
    return vals


def _points(text: str) -> list[list[float]]:
    pts = [_floats(p) for p in str(text).split(";") if p.strip()]
    if any(len(p) != 3 for p in pts):
        raise argparse.ArgumentTypeError(f"expected 'd,w,r;d,w,r;...', got {text!r}")
    return pts


def _names(text: str) -> list[str]:
    return [x.strip() for x in str(text).split(",") if x.strip()]


def _opt(kind):
    def parse(text: str):
        return None if str(text).lower() in ("none", "") else kind(text)
    parse.__name__ = kind.__name__
    return parse


_FIELD_TYPES = {"list[float]": _floats, "list[list[float]]": _points,
                "list[float] | None": _opt(_floats),
                "list[str]": _names, "list[str] | None": _opt(_names),
                "int": int, "float": float, "str": str, "int | None": _opt(int),
                "float | None": _opt(float), "str | None": _opt(str)}
POS, NONNEG = _ranged(int, 1, "a whole number >= 1"), _ranged(int, 0, "a whole number >= 0")
# Upper bounds that keep a typo from allocating gigabytes or spawning thousands of threads.
MAX_RESOLUTION, MAX_THREADS = 1024, 256
SIDE = _ranged(int, 1, f"a side in px, 1..{MAX_RESOLUTION}", MAX_RESOLUTION)
THREADS = _ranged(int, 1, f"a thread count, 1..{MAX_THREADS}", MAX_THREADS)


# ---------------------------------------------------------------------------- shared options
def add_data_args(p, default: str | None = "fashion-mnist") -> None:
    p.add_argument("--data", default=default, help="dataset name (fashion-mnist, cifar10, "
                   "cifar100, imagefolder, synthetic)")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: Debian's "
                   "/usr/share/datasets/fashion-mnist for fashion-mnist)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of the training set held out for validation")
    p.add_argument("--batch-size", type=POS, default=128)
    p.add_argument("--workers", type=NONNEG, default=0, help="DataLoader worker processes")
    p.add_argument("--input-size", type=SIDE, default=None, help="image folders: the model's "
                   "input side (default: the images' own)")
    p.add_argument("--resize", default="resize", choices=["resize", "center-crop"],
                   help="image folders: plain resize (default) or ImageNet-style center crop")
    p.add_argument("--train-augment", default="mild", choices=["mild", "imagenet"],
                   help="image folders: mild = crop with padding and flip (default); imagenet "
                        "= RandomResizedCrop")
    p.add_argument("--mean", type=_floats, default=None, help="per-channel mean, e.g. "
                   "0.5,0.5,0.5 (default: the dataset's; image folders: computed)")
    p.add_argument("--std", type=_floats, default=None, help="per-channel std (as --mean)")


def data_source(args):
    from ..pipeline import DatasetSource

    if not 0.0 < args.val_fraction < 1.0:
        raise DwrpruneError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    return DatasetSource(args.data, args.data_dir, args.val_fraction, args.batch_size,
                         args.workers, args.input_size, args.resize, args.train_augment,
                         args.mean, args.std)


def add_checkpoint_arg(p) -> None:
    from ..pretrained import DEFAULT

    p.add_argument("--checkpoint", default=DEFAULT,
                   help=f"model checkpoint path, or a bundled name (default: {DEFAULT})")
    add_model_args(p, weights=True)


def _json_object(text: str) -> dict:
    import json

    try:
        v = json.loads(text)
    except ValueError:
        v = None
    if not isinstance(v, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"width\": 32}}', "
                                         f"got {text!r}")
    return v


def add_model_args(p, weights: bool = False, model: bool = True) -> None:
    """Your own model class: ``--model package.module:factory`` (imported from the command
    line only, never from a file), ``--model-kwargs`` and, with ``weights``, ``--weights``."""
    p.set_defaults(own_model_flag=model)  # here --model names only a class of your own
    if model:
        p.add_argument("--model", default=None, help="your own model: package.module:factory "
                       "(a callable returning the nn.Module; run from its folder or install "
                       "it)")
    p.add_argument("--model-kwargs", type=_json_object, default=None,
                   help="JSON keyword arguments for --model's factory")
    if weights:
        p.add_argument("--weights", default=None, help="state_dict file of --model's trained "
                       "weights (instead of --checkpoint; read without running code)")


def prepare_model(args) -> None:
    """Register the model class named by ``--model package.module:factory``, also under the
    ``local/...`` name a Python-made checkpoint records, so every command loads it."""
    target = getattr(args, "model", None)
    if not target or (":" not in target and not getattr(args, "own_model_flag", False)):
        given = [f for f in ("weights", "model_kwargs") if getattr(args, f, None) is not None]
        if given:
            raise DwrpruneError(f"--{given[0].replace('_', '-')} goes with --model "
                                "package.module:factory (your own model class)")
        return
    from ..tasks import register_importable

    register_importable(target, args.model_kwargs)
    ckpt = getattr(args, "checkpoint", None)
    if ckpt and getattr(args, "weights", None) is None:
        from ..checkpoint import read_model_checkpoint
        from ..models.registry import MODELS

        name = read_model_checkpoint(checkpoint_path(ckpt))["spec"]["model"]["name"]
        if isinstance(name, str) and name.startswith("local/") and name not in MODELS:
            MODELS.register(MODELS.get(target), name=name)


def load_model(args, data=None):
    """The model a command works on: ``--model ... --weights`` imported (its input side from
    ``--input-size`` or ``data``), else ``--checkpoint``."""
    from ..checkpoint import load

    if getattr(args, "weights", None) is not None:
        from ..tasks import import_model

        return import_model(args.model, args.weights, kwargs=args.model_kwargs,
                            input_size=getattr(args, "input_size", None), data=data)
    return load(checkpoint_path(args.checkpoint), check_input=False)


def add_progress_arg(p) -> None:
    p.add_argument("--progress", default="auto", choices=["auto", "always", "never"],
                   help="progress bars: auto = only on a terminal (one line per stage or "
                        "epoch in a log file)")
    p.add_argument("--no-progress", dest="progress", action="store_const", const="never")


def progress(args) -> bool:
    from ..training import distributed
    from ..training.progress import resolve_progress

    return resolve_progress(args.progress) and distributed.is_main()


def checkpoint_path(name):
    from ..pretrained import resolve

    return resolve(name)


def print_cost_table(rows) -> None:
    from ..cost import format_count

    print(f"{'':10s} {'MACs':>12s} {'params':>12s} {'res':>5s} {'lat b1 ms':>10s} "
          f"{'lat b64 ms':>11s}")
    for label, rep in rows:
        lat = {x.batch_size: x.median_ms for x in rep.latency}
        print(f"{label:10s} {format_count(rep.macs):>12s} {format_count(rep.params):>12s} "
              f"{rep.resolution:5d} {lat.get(1, float('nan')):10.2f} "
              f"{lat.get(64, float('nan')):11.2f}")


