"""Checkpoints as data: a JSON-serialisable spec plus tensors, never a pickled module.

Every file dwrprune writes is a plain dict of tensors, numbers, strings, lists and dicts, so it
loads with ``torch.load(weights_only=True)``.  Writes are atomic (temporary file in the same
folder, fsync, ``os.replace``): a run killed mid-write leaves the previous file intact.

A model spec looks like::

    {"model": {"name": "resnet20", "num_classes": 10, "in_channels": 1},
     "input": {"resolution": 28, "dataset": "fashion-mnist", "mean": [...], "std": [...]},
     "arch": null}          # pruning edits, filled in by dwrprune.shrink

and a model checkpoint is ``{"format": "dwrprune", "format_version": 1, "spec": spec,
"state_dict": ..., "meta": {...}}``.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import DwrpruneError, quote_error
from .spec import ModelSpec, make_spec  # noqa: F401  (make_spec: historical home)

FORMAT = "dwrprune"
FORMAT_VERSION = 1


def atomic_write_bytes(path: str | os.PathLike, writer) -> None:
    """Call ``writer(fileobj)`` on a temporary file, then move it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_torch(path: str | os.PathLike, payload: dict) -> None:
    atomic_write_bytes(path, lambda f: torch.save(payload, f))


def save_json(path: str | os.PathLike, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def load_torch(path: str | os.PathLike) -> dict:
    """``torch.load(weights_only=True)`` with clear errors for missing or corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise DwrpruneError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():
            # a file pickled outside torch.save (protocol != 2) makes torch warn before it
            # refuses or accepts it; the user gets our one line instead
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure here means "not a usable checkpoint"
        raise DwrpruneError(
            f"{path} is not a readable checkpoint (corrupt, truncated, or it holds pickled "
            f"objects that dwrprune never loads): {quote_error(e)}") from None
    if not isinstance(obj, dict):
        raise DwrpruneError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    return obj


def plain(obj: Any) -> Any:
    """``obj`` as plain JSON data (str subclasses such as torch's version become str)."""
    try:
        return json.loads(json.dumps(obj, default=str))
    except (TypeError, ValueError) as e:
        raise DwrpruneError(f"cannot store {type(obj).__name__} in a checkpoint: {e}") from None


def model_payload(model: nn.Module, spec: dict, meta: dict | None = None) -> dict:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "spec": plain(spec),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "meta": plain(meta or {})}


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
    from .surgery import apply_arch

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
        from .surgery import apply_arch

        apply_arch(model, spec.arch)
    if not isinstance(obj["state_dict"], dict):
        raise DwrpruneError(f"{path}: state_dict is a {type(obj['state_dict']).__name__}, "
                            "not a mapping of tensors")
    load_state_dict_checked(model, obj["state_dict"], str(path))
    model.dwrprune_spec = spec.to_dict()
    model.eval()
    return model
