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

from torch import nn

from .errors import DwrpruneError
from .io.files import FORMAT, FORMAT_VERSION, load_torch, model_payload, save_torch
from .io.spec import ModelSpec


def save_model(path: str | os.PathLike, model: nn.Module, spec: dict,
               meta: dict | None = None) -> None:
    """Write a portable model checkpoint (spec + state_dict), atomically."""
    save_torch(path, model_payload(model, spec, meta))


def read_model_checkpoint(path: str | os.PathLike) -> dict:
    """Load and validate the outer structure of a model checkpoint."""
    obj = load_torch(path)
    if obj.get("format") != FORMAT or "spec" not in obj or "state_dict" not in obj:
        raise DwrpruneError(
            f"{path} is not a dwrprune model checkpoint (expected keys format='dwrprune', spec, "
            f"state_dict; found {sorted(obj)[:8]})"
        )
    if obj.get("format_version", 0) > FORMAT_VERSION:
        raise DwrpruneError(f"{path} was written by a newer dwrprune (format version "
                            f"{obj['format_version']} > {FORMAT_VERSION})")
    return obj


def build_from_spec(spec: dict) -> nn.Module:
    """Rebuild the architecture a spec describes, from the registered constructor."""
    from .models import create_model
    from .pruning.surgery import apply_arch

    s = ModelSpec.from_dict(spec)  # schema first: nothing is built from an unchecked spec
    if not s.name:
        raise DwrpruneError("the spec names no registered model constructor, so it cannot be "
                            "rebuilt; load the weights into your own instance with "
                            "dwrprune.load(path, model=...)")
    model = create_model(s.name, num_classes=s.num_classes, in_channels=s.in_channels)
    if s.arch:
        apply_arch(model, s.arch)
    return model


def load_state_dict_checked(model: nn.Module, state_dict: dict, source: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line error naming the first mismatches."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shape = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}")
        if shape:
            parts.append(f"shape mismatch {shape[:3]}")
        raise DwrpruneError(f"checkpoint {source} does not match the model: " + "; ".join(parts))
    model.load_state_dict(state_dict)


def load(path: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Rebuild a model from a portable checkpoint; the spec is kept as ``model.dwrprune_spec``.

    With ``model`` (your own instance of the unpruned architecture, e.g. a model without a
    registered constructor), the checkpoint's pruning edits are applied to it and its
    weights loaded into it, in place; it is returned."""
    obj = read_model_checkpoint(path)
    spec = ModelSpec.from_dict(obj["spec"])
    if model is None:
        model = build_from_spec(obj["spec"])
    elif spec.arch:
        from .pruning.surgery import apply_arch

        apply_arch(model, spec.arch)
    if not isinstance(obj["state_dict"], dict):
        raise DwrpruneError(f"{path}: state_dict is a {type(obj['state_dict']).__name__}, "
                            "not a mapping of tensors")
    load_state_dict_checked(model, obj["state_dict"], str(path))
    model.dwrprune_spec = spec.to_dict()
    model.eval()
    return model
