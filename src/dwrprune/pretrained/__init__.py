"""Checkpoints dwrprune trains and ships itself (see the JSON card beside each file)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import DwrpruneError

_HERE = Path(__file__).parent
DEFAULT = "resnet20-fashion-mnist"


def available() -> list[str]:
    return sorted(p.stem for p in _HERE.glob("*.pt"))


def path(name: str = DEFAULT) -> Path:
    p = _HERE / f"{name}.pt"
    if not p.is_file():
        raise DwrpruneError(f"no bundled checkpoint {name!r}; bundled: {', '.join(available())}")
    return p


def card(name: str = DEFAULT) -> dict:
    """The record next to a bundled checkpoint: command, seed, test accuracy."""
    p = _HERE / f"{name}.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def resolve(checkpoint: str | Path) -> Path:
    """A checkpoint path, or the name of a bundled checkpoint."""
    s = str(checkpoint)
    if s in available() or s.startswith("bundled:"):
        return path(s.removeprefix("bundled:"))
    return Path(checkpoint)
