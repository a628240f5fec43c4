"""The one-shot jobs of the command line as library functions: train a model from scratch,
shrink a checkpoint to a point, AutoBot a checkpoint to a budget, export to ONNX, and the
output-path rule they share.  ``dwrprune.cli`` only parses arguments and calls these."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import torch

from ._version import __version__
from .checkpoint import load, save_model
from .cost import CostReport, cost_report, cost_reports_side_by_side
from .errors import DwrpruneError
from .io.files import check_folder_writable, output_file, read_json, save_json
from .io.settings import check_same_settings
from .io.spec import make_spec, spec_of
from .pipeline.data import DatasetSource, check_data_matches
from .pruning.shrink import Shrinker, ShrinkResult, data_needs
from .training import distributed
from .training.engine import TrainConfig, compute_device, evaluate, resolve_precision, train


def train_model(name: str, data: DatasetSource, out: str | os.PathLike, *,
                resolution: int | None = None, config: TrainConfig | None = None,
                subset: int | None = None, augment: bool | None = None,
                progress: bool = True, command: str = "",
                init: str | os.PathLike | None = None) -> dict:
    """Train registered model ``name`` into folder ``out`` (resumable from its last.pt), from
    scratch or, with ``init``, from the weights of an unpruned checkpoint of the same model
    (a warm restart: a new schedule from trained weights; the card keeps the checkpoint's
    own card under ``init``); writes model.pt, history.json and card.json (rank 0 only);
    returns the card."""
    from .models import check_resolution, create_model

    config = config or TrainConfig()
    config.validate()
    # recorded as what "auto" means here, so a resumed folder trains as it began
    config = dataclasses.replace(config, precision=resolve_precision(config.precision,
                                                                     compute_device()))
    out = check_folder_writable(out, "training folder")
    torch.manual_seed(config.seed)
    train_loader = data.loader("train", resolution, shuffle=True, subset=subset,
                               seed=config.seed, augment=augment)
    info = train_loader.dataset.info
    res = resolution or info.resolution
    check_resolution(name, res)
    model = create_model(name, num_classes=info.num_classes, in_channels=info.in_channels)
    spec = make_spec(name, info.num_classes, info.in_channels, res, info.name, info.mean,
                     info.std)
    init_card = _warm_start(model, name, info, init) if init is not None else None
    settings = {"model": name, "data": data.name, "data_dir": data.data_dir,
                "resolution": resolution, "subset": subset, "augment": augment,
                "init": None if init is None else str(init), **vars(config)}
    old = out / "config.json"
    if old.exists() and ((out / "last.pt").exists() or (out / "model.pt").exists()):
        body = read_json(old, "training config", "use a new --out folder")
        if isinstance(body, dict):  # refused here, before config.json is written again
            body.pop("command", None)
            check_same_settings(body, settings, f"training folder {out}", "trained")
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        save_json(out / "config.json", {"command": command, **settings})
    result = train(model, train_loader, config, val_loader=data.loader("val", res),
                   checkpoint_dir=out, spec=spec, progress=progress)
    test = evaluate(model, data.loader("test", res), progress=progress)
    card = {"command": command, "seed": config.seed, "test_acc": test.accuracy,
            "test_loss": test.loss, "val_acc": result.history[-1].get("val_acc"),
            "epochs": len(result.history), "train_seconds": result.seconds,
            "precision": config.precision, "channels_last": config.channels_last,
            "dwrprune_version": __version__, "torch": torch.__version__,
            "processes": distributed.world_size()}
    if init_card is not None:
        card["init"] = init_card
    if distributed.is_main():
        save_model(out / "model.pt", model, spec, card)
        save_json(out / "history.json", result.history)
        save_json(out / "card.json", {**card, "history": result.history})
    return card


def _warm_start(model, name: str, info, init: str | os.PathLike) -> dict:
    """Load the weights of checkpoint ``init`` into ``model`` (registered model ``name``, for
    the dataset ``info``); returns ``{"checkpoint": path, "card": its card}``.  Only an
    unpruned checkpoint of the same model, classes and input channels is accepted."""
    from .checkpoint import load_state_dict_checked, read_model_checkpoint
    from .io.spec import ModelSpec

    obj = read_model_checkpoint(init)
    s = ModelSpec.from_dict(obj["spec"])
    want = (name, info.num_classes, info.in_channels)
    if (s.name, s.num_classes, s.in_channels) != want or s.arch:
        raise DwrpruneError(
            f"--init {init} holds {'a pruned ' if s.arch else ''}{s.name or 'an unnamed model'} "
            f"with {s.num_classes} classes and {s.in_channels} input channels; training "
            f"{name} on {info.name} needs an unpruned {name} with {info.num_classes} classes "
            f"and {info.in_channels} input channels")
    load_state_dict_checked(model, obj["state_dict"], str(init))  # the file, read once
    return {"checkpoint": str(init), "card": obj.get("meta", {})}


def _source_for(spec, data: DatasetSource | None) -> DatasetSource | None:
    """``data``, or (no dataset named) the checkpoint's own dataset; None if neither."""
    if data is None or not (data.name or spec.dataset):
        return None
    return data if data.name else dataclasses.replace(data, name=spec.dataset)


def shrink_checkpoint(checkpoint: str | os.PathLike, d: float, w: float, r: float,
                      out: str | os.PathLike, *, data: DatasetSource | None = None,
                      force: bool = False, recal_batches: int = 50, threads: int = 1,
                      **shrinker_options) -> tuple[CostReport, CostReport, ShrinkResult,
                                                   Shrinker]:
    """Prune a checkpoint to (d, w, r) and save it; returns the cost before and after, the
    result and the shrinker.  ``shrinker_options`` go to :class:`Shrinker` (criteria,
    transitions, blocks, round_to).  Data (``data``, or the checkpoint's own dataset) is used
    for BatchNorm re-calibration and for criteria that need it."""
    out = output_file(out, force)
    if isinstance(recal_batches, bool) or recal_batches < 0:
        raise DwrpruneError(f"recal_batches must be >= 0, got {recal_batches}")
    model = load(checkpoint, check_input=False)
    spec = spec_of(model)
    needs = data_needs(shrinker_options.get("depth_criterion", "weight_norm"),
                       shrinker_options.get("channel_criterion", "l1"))
    source = _source_for(spec, data)
    loaders, recal = {}, None
    if needs or recal_batches > 0:
        if source is None:
            raise DwrpruneError("pass --data (the checkpoint names no dataset) or "
                                "--recal-batches 0 with data-free criteria")
        check_data_matches(spec, source.info)
        if needs:
            loaders = {"train_loader": source.loader("train", spec.resolution, shuffle=True),
                       "val_loader": source.loader("val", spec.resolution)}
        if recal_batches > 0:
            def recal(res):
                return source.loader("train", res, shuffle=True)
    shr = Shrinker(model, criterion_data=loaders, **shrinker_options)
    res = shr.shrink(d, w, r, recalibrate=recal, recal_batches=recal_batches)
    before, after = cost_reports_side_by_side(
        [(model, spec.resolution), (res.model, res.spec["input"]["resolution"])],
        threads=threads)
    save_model(out, res.model, res.spec, {"source": str(checkpoint), "macs": res.macs,
                                          "params": res.params})
    return before, after, res, shr


def autobot_checkpoint(checkpoint: str | os.PathLike, data: DatasetSource, budget: float,
                       out: str | os.PathLike, *, config=None, force: bool = False,
                       recal_batches: int = 20, progress: bool = True, ignored_layers=None
                       ) -> tuple[CostReport, CostReport, ShrinkResult, float, float]:
    """AutoBot a checkpoint to ``budget`` of its MACs and save it; returns the costs, the
    result and validation accuracy before and after (before fine-tuning)."""
    from .pruning.autobot import autobot_prune

    out = output_file(out, force)
    if recal_batches < 0:
        raise DwrpruneError(f"recal_batches must be >= 0, got {recal_batches}")
    model = load(checkpoint, check_input=False)
    spec = spec_of(model)
    seed = config.seed if config is not None else 0
    train_loader = data.loader("train", spec.resolution, shuffle=True, seed=seed)
    check_data_matches(spec, train_loader.dataset.info)
    result = autobot_prune(model, train_loader, budget, config, progress=progress,
                           recal_loader=train_loader, recal_batches=recal_batches,
                           ignored_layers=ignored_layers)
    val = data.loader("val", spec.resolution)
    before, after = cost_reports_side_by_side([(model, spec.resolution),
                                               (result.model, spec.resolution)])
    acc0, acc1 = evaluate(model, val).accuracy, evaluate(result.model, val).accuracy
    save_model(out, result.model, result.spec, {"source": str(checkpoint),
                                                "macs": result.macs})
    return before, after, result, acc0, acc1


def export_checkpoint(checkpoint: str | os.PathLike, onnx: str | os.PathLike, *,
                      opset: int | None = None, force: bool = False) -> tuple[Path, object]:
    """ONNX export of a checkpoint (dynamic batch); returns the path and the spec."""
    from .export import SUPPORTED_OPSETS, export_onnx

    if opset is not None and opset not in SUPPORTED_OPSETS:
        raise DwrpruneError(f"opset {opset} is not supported by this exporter; choose "
                            f"{SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1}")
    out = output_file(onnx, force)
    model = load(checkpoint, check_input=False)
    spec = spec_of(model)
    export_onnx(model, out, spec.resolution, spec.in_channels, opset)
    return out, spec


def evaluate_checkpoint(checkpoint: str | os.PathLike, data: DatasetSource, split: str = "test",
                        progress: bool = False):
    """Accuracy and loss of a checkpoint on a split of ``data`` (at the checkpoint's input
    resolution; the dataset must match the model)."""
    model = load(checkpoint)
    spec = spec_of(model)
    check_data_matches(spec, data.info)
    data = fed_as_recorded(data, spec)
    loader = data.loader(split, spec.resolution)
    return evaluate(model, loader, progress=progress)


def fed_as_recorded(data: DatasetSource, spec) -> DatasetSource:
    """``data`` reading images as the model's deployment contract says (its mean, std and
    resize method), where the caller did not set them."""
    import dataclasses

    if spec.mean is None or data.mean is not None or data.std is not None:
        return data
    return dataclasses.replace(data, mean=list(spec.mean), std=list(spec.std),
                               resize=spec.resize or data.resize)


def model_info(name: str | None, checkpoint: str | os.PathLike | None,
               resolution: int | None = None, in_channels: int | None = None,
               num_classes: int = 10, batch_sizes: tuple[int, ...] = (1, 64),
               threads: int = 1, repeats: int = 20
               ) -> tuple[CostReport, str, int, torch.nn.Module]:
    """MACs, params and latency of a registered model (fresh weights) or a checkpoint, at
    ``resolution`` (default: the checkpoint's, or 32); returns the report, the model name,
    its input channels and the model."""
    from .models import check_resolution, create_model

    for label, v in (("resolution", resolution), ("in_channels", in_channels),
                     ("threads", threads), ("repeats", repeats), ("num_classes", num_classes)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise DwrpruneError(f"{label} must be a whole number >= 1, got {v!r}")
    if name:
        in_ch = in_channels or 3
        model = create_model(name, num_classes=num_classes, in_channels=in_ch)
        res = resolution or 32
    else:
        model = load(checkpoint, check_input=False)  # costed at any side asked for
        spec = spec_of(model)
        name, in_ch, res = spec.name, spec.in_channels, resolution or spec.resolution
    check_resolution(name, res)
    return (cost_report(model, res, in_ch, tuple(batch_sizes), threads, repeats), name, in_ch,
            model)


def model_axes(model_or_name, resolution: int | None = None, in_channels: int = 3,
               num_classes: int = 10) -> dict:
    """Which axes a model offers: removable blocks (depth), traceable coupled channel groups
    (width), and the input sides allowed (resolution)."""
    from .models import create_model
    from .pruning.analysis import Analysis

    if isinstance(model_or_name, str):
        model = create_model(model_or_name, num_classes=num_classes, in_channels=in_channels)
        model.dwrprune_spec = make_spec(model_or_name, num_classes, in_channels,
                                        resolution or 32)
    else:
        model = model_or_name
    return Analysis(model, resolution=resolution).axes()


# ---------------------------------------------------------------------------- your model
_IMPORTABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def register_importable(target: str, kwargs: dict | None = None) -> str:
    """Register ``package.module:factory`` (any importable callable that returns an
    ``nn.Module``, called with ``kwargs``) as a model named ``target``, so that checkpoints
    of it and of its pruned variants load in this process.  Only names given by the user
    in code or on the command line are imported; a checkpoint or a config file never
    makes dwrprune import anything.  Returns ``target``."""
    import importlib

    from .models.registry import MODELS, register_model

    if not isinstance(target, str) or not _IMPORTABLE.match(target):
        raise DwrpruneError(f"a model of your own is named package.module:factory (a callable "
                            f"returning an nn.Module), got {str(target)[:80]!r}")
    kwargs = dict(kwargs or {})
    if target in MODELS:
        if getattr(MODELS.get(target).fn, "kwargs", kwargs) != kwargs:
            raise DwrpruneError(f"{target} is already registered with other kwargs "
                                f"({MODELS.get(target).fn.kwargs})")
        return target
    module, attr = target.split(":")
    import sys

    if os.getcwd() not in sys.path:  # as `python -m` and uvicorn do: the working folder first
        sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(module)
    except ImportError as e:
        raise DwrpruneError(f"cannot import {module!r} for --model {target} ({e}); run from "
                            "the folder that holds it, or install it") from None
    for part in attr.split("."):
        obj = getattr(obj, part, None)
    if not callable(obj):
        raise DwrpruneError(f"{target}: {module} has no callable {attr!r}")
    factory = obj

    def build(**_):
        try:
            model = factory(**kwargs)
        except Exception as e:  # noqa: BLE001 - the user's constructor may raise anything
            raise DwrpruneError(f"{target}(**{kwargs}) failed: {type(e).__name__}: "
                                f"{str(e)[:120]}") from None
        if not isinstance(model, torch.nn.Module):
            raise DwrpruneError(f"{target} returned a {type(model).__name__}, not an "
                                "nn.Module")
        return model

    build.kwargs = kwargs
    register_model(target, min_resolution=8, description=f"imported from {module}")(build)
    return target


def _state_dict_of(obj: dict, path) -> dict:
    """The tensors of a weights file: a state_dict, or one under a usual key."""
    if obj.get("format") == "dwrprune":
        obj = obj["state_dict"]
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                          for k, v in obj.items()):
        raise DwrpruneError(f"{path} holds no state_dict (a mapping of parameter names to "
                            "tensors, possibly under 'state_dict' or 'model')")
    return obj


def import_model(target: str, weights: str | os.PathLike | None = None, *,
                 kwargs: dict | None = None, input_size: int | None = None,
                 data: DatasetSource | None = None) -> torch.nn.Module:
    """Your model, ready for dwrprune: built by ``target`` (``package.module:factory``, see
    :func:`register_importable`), its weights loaded from ``weights`` (a state_dict file,
    read with ``weights_only``), and a spec attached: input channels from its first
    convolution, classes from its output, input side ``input_size`` (default: the native
    size of ``data``), and how ``data`` feeds it."""
    from .checkpoint import load_state_dict_checked
    from .cost import first_conv_in_channels
    from .io.files import load_torch
    from .models import create_model

    name = register_importable(target, kwargs)
    model = create_model(name)
    if weights is not None:
        load_state_dict_checked(model, _state_dict_of(load_torch(weights), weights),
                                str(weights))
    info = data.info if data is not None else None
    side = input_size or (info.resolution if info is not None else None)
    if side is None:
        raise DwrpruneError(f"{target}: give its input side (--input-size, or "
                            "input_size=), or data to take it from")
    in_ch = first_conv_in_channels(model)
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, in_ch, side, side))
    except Exception as e:  # noqa: BLE001 - the user's forward may raise anything
        raise DwrpruneError(f"{target} fails on a 1x{in_ch}x{side}x{side} input "
                            f"({type(e).__name__}: {str(e)[:120]}); give --input-size") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise DwrpruneError(f"{target} must return class scores (N, classes)")
    mean, std, resize, dataset = ((info.mean, info.std, info.resize, info.name)
                                  if info is not None else (None, None, None, None))
    model.dwrprune_spec = make_spec(name, out.shape[1], in_ch, side, dataset, mean, std,
                                    resize=None if resize == "resize" else resize)
    return model
