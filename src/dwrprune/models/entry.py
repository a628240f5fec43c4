"""One registry entry: a model constructor and what the registry knows about it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

ModelFn = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    fn: ModelFn
    min_resolution: int
    description: str = ""
    tiny: bool = False
