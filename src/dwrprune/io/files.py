"""Files, written atomically and read safely.

Every file dwrprune writes is a plain dict of tensors, numbers, strings, lists and dicts, so it
loads with ``torch.load(weights_only=True)``.  Writes are atomic (temporary file in the same
folder, fsync, ``os.replace``): a run killed mid-write leaves the previous file intact.
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

from ..errors import DwrpruneError, quote_error

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


def _writable_parent(path: Path, what: str) -> None:
    """The nearest existing folder at or above ``path`` can be written in, else one error."""
    parent = next((q for q in [path, *path.parents] if q.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise DwrpruneError(f"cannot write {what} {path}: {parent} is not a writable folder")


def check_folder_writable(path: str | os.PathLike, what: str = "folder") -> Path:
    """``path`` is a folder, or can be made one, and can be written: else one clear error
    naming it.  Returns ``path``."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise DwrpruneError(f"--out {p} exists and is not a folder; a {what} must be a "
                            "directory (choose another path)")
    _writable_parent(p, what)
    return p


def output_file(path: str | os.PathLike, force: bool = False) -> Path:
    """An output file path that can be written: not an existing folder, inside a writable
    folder, and not an existing file unless ``force``.  Checked before any work."""
    out = Path(path)
    if out.is_dir():
        raise DwrpruneError(f"output {out} is a folder; give a file path (e.g. {out}/model.pt)")
    if out.exists() and not force:
        raise DwrpruneError(f"{out} exists; pass --force to overwrite it")
    _writable_parent(out.parent, "output")
    if out.exists() and not os.access(out, os.W_OK):
        raise DwrpruneError(f"cannot overwrite {out}: the file is read-only")
    return out
