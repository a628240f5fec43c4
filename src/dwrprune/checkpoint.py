"""Checkpoints as data: a JSON-serialisable spec plus tensors, never a pickled module.

Every checkpoint is a plain dict (:mod:`dwrprune.io.files`: atomic writes, safe reads).

A model spec looks like::

    {"model": {"name": "resnet20", "num_classes": 10, "in_channels": 1},
     "input": {"resolution": 28, "dataset": "fashion-mnist", "mean": [...], "std": [...]},
     "arch": null}          # pruning edits, filled in by dwrprune.shrink

and a model checkpoint is ``{"format": "dwrprune", "format_version": 1, "spec": spec,
"state_dict": ..., "meta": {...}}``.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from .errors import DwrpruneError
from .io.files import FORMAT, FORMAT_VERSION, load_torch, model_payload, save_torch
from .io.spec import ModelSpec


def save_model(path: str | os.PathLike, model: nn.Module, spec: dict,
               meta: dict | None = None) -> None:
    """Write a portable model checkpoint (spec + state_dict), atomically.  The spec is
    checked first: a file that could not be loaded back is never written."""
    if not isinstance(model, nn.Module):
        raise DwrpruneError(f"save_model needs an nn.Module, got {type(model).__name__}")
    if isinstance(spec, ModelSpec):
        spec = spec.to_dict()
    ModelSpec.from_dict(spec)
    if meta is not None and not isinstance(meta, dict):
        raise DwrpruneError(f"save_model: meta must be a mapping, got {type(meta).__name__}")
    save_torch(path, model_payload(model, spec, meta))


def read_model_checkpoint(path: str | os.PathLike) -> dict:
    """Load and validate the outer structure of a model checkpoint."""
    obj = load_torch(path)
    if obj.get("format") != FORMAT or "spec" not in obj or "state_dict" not in obj:
        raise DwrpruneError(
            f"{path} is not a dwrprune model checkpoint (expected keys format='dwrprune', spec, "
            f"state_dict; found {sorted(obj)[:8]})"
        )
    version = obj.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise DwrpruneError(f"{path}: format_version must be a whole number, got "
                            f"{type(version).__name__}; the file is damaged")
    if version > FORMAT_VERSION:
        raise DwrpruneError(f"{path} was written by a newer dwrprune (format version "
                            f"{version} > {FORMAT_VERSION})")
    sd = obj["state_dict"]
    if not isinstance(sd, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise DwrpruneError(f"{path}: state_dict must map parameter names to tensors; the "
                            "file is damaged or not written by dwrprune")
    if not isinstance(obj.get("meta", {}), dict):
        raise DwrpruneError(f"{path}: meta must be a mapping; the file is damaged")
    return obj


def _build(s: ModelSpec, device: str) -> nn.Module:
    from .models import create_model
    from .pruning.surgery import apply_arch

    try:
        with torch.device(device):
            model = create_model(s.name, num_classes=s.num_classes, in_channels=s.in_channels)
            if s.arch:
                apply_arch(model, s.arch)
    except DwrpruneError:
        raise
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            RecursionError, NotImplementedError, AssertionError) as e:
        raise DwrpruneError(f"the spec's architecture cannot be built ({type(e).__name__}: "
                            f"{str(e)[:150]}); the checkpoint is damaged") from None
    return model


def build_from_spec(spec: dict, state_dict: dict | None = None) -> nn.Module:
    """Rebuild the architecture a spec describes, from the registered constructor.  With
    ``state_dict``, the architecture is first built without memory (on the meta device) and
    its tensor shapes compared with the state_dict's, so a spec that disagrees with its
    weights (a million classes, say) is refused before anything is allocated."""
    s = ModelSpec.from_dict(spec)  # schema first: nothing is built from an unchecked spec
    if not s.name:
        raise DwrpruneError("the spec names no registered model constructor, so it cannot be "
                            "rebuilt; load the weights into your own instance with "
                            "dwrprune.load(path, model=YourNet())")
    from .models.registry import MODELS

    if (s.name.startswith("local/") or ":" in s.name) and s.name not in MODELS:
        cls = s.name.split(":")[-1] if ":" in s.name else s.name[6:].rsplit("-", 1)[0]
        flag = s.name if ":" in s.name else f"your_module:{cls}"
        raise DwrpruneError(f"the spec names {s.name!r}, a model class of your own, which a "
                            f"checkpoint never imports: on the command line give --model "
                            f"{flag} (and its --model-kwargs); in Python "
                            f"dwrprune.load(path, model={cls}())")
    if state_dict is not None:
        try:
            shapes = {k: tuple(v.shape) for k, v in _build(s, "meta").state_dict().items()}
        except DwrpruneError:
            shapes = None  # the real build below gives the error
        if shapes is not None:
            _check_shapes(shapes, state_dict, f"model {s.name!r} as the spec describes it")
    return _build(s, "cpu")


def _check_shapes(own: dict, state_dict: dict, source: str) -> None:
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shape = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v)}" for k, v in own.items()
             if k in state_dict and tuple(state_dict[k].shape) != tuple(v)]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}")
        if shape:
            parts.append(f"shape mismatch {shape[:3]}")
        raise DwrpruneError(f"checkpoint {source} does not match the model: " + "; ".join(parts))


def load_state_dict_checked(model: nn.Module, state_dict: dict, source: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line error naming the first mismatches."""
    _check_shapes({k: tuple(v.shape) for k, v in model.state_dict().items()}, state_dict,
                  source)
    model.load_state_dict(state_dict)


class InputSizeWarning(UserWarning):
    """A model was given input of another size than its deployment contract says."""


class ContractCheck:
    """Forward pre-hook: in eval mode, warns once when the input's (C, H, W) is not the
    spec's; a pruned model runs on larger input but scores lower than on the side it was
    pruned and fine-tuned for.  Silent while tracing or exporting."""

    def __init__(self, owner: nn.Module):
        import weakref

        self.warned = False
        self.owner = weakref.ref(owner)  # a deep copy (a pruned variant) shares it: silent

    def __call__(self, module: nn.Module, args) -> None:
        if self.warned or module.training or not args or not isinstance(args[0], torch.Tensor):
            return
        if self.owner() is not module:
            return
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return
        spec = getattr(module, "dwrprune_spec", None)
        x = args[0]
        if spec is None or x.dim() != 4:
            return
        side = spec["input"]["resolution"]  # validated when it was attached
        want = (spec["model"]["in_channels"], side, side)
        if tuple(x.shape[1:]) != want:
            import warnings

            s = ModelSpec.from_dict(spec)  # only for the message
            self.warned = True
            warnings.warn(f"{type(module).__name__} takes {want[0]}x{want[1]}x{want[2]} "
                          f"input ({s.contract_line()}), got "
                          f"{'x'.join(map(str, x.shape[1:]))}: resize to its side first "
                          "(it was pruned and fine-tuned for that side)", InputSizeWarning,
                          stacklevel=3)


def load(path: str | os.PathLike, model: nn.Module | None = None, *,
         check_input: bool = True) -> nn.Module:
    """Rebuild a model from a portable checkpoint; the spec is kept as ``model.dwrprune_spec``.

    With ``model`` (your own instance of the unpruned architecture, e.g. a model without a
    registered constructor), the checkpoint's pruning edits are applied to it and its
    weights loaded into it, in place; it is returned.  ``check_input``: in eval mode, warn
    (:class:`InputSizeWarning`, once) when the model gets input of another size than its
    spec's deployment contract."""
    if model is not None and not isinstance(model, nn.Module):
        raise DwrpruneError(f"load(path, model=...) takes your own nn.Module instance of the "
                            f"unpruned architecture, got {type(model).__name__}")
    obj = read_model_checkpoint(path)
    spec = ModelSpec.from_dict(obj["spec"])
    if model is None:
        model = build_from_spec(obj["spec"], obj["state_dict"])
    elif spec.arch:
        from .pruning.surgery import apply_arch

        apply_arch(model, spec.arch)
    load_state_dict_checked(model, obj["state_dict"], str(path))
    model.dwrprune_spec = spec.to_dict()
    if check_input:
        model.register_forward_pre_hook(ContractCheck(model))
    model.eval()
    return model
