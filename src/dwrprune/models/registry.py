"""A registry of small model constructors and one ``create_model(name, ...)``.

Every constructor takes ``num_classes`` and ``in_channels`` as keywords and returns an
``nn.Module``.  Each entry also records the smallest input side the network accepts, so that
the resolution axis can refuse a point the network cannot run at, with a clear error.
Names of the form ``tv/NAME`` are resolved lazily to torchvision's classification models, and
``timm/NAME`` to timm's (with the optional timm extra).
"""

from __future__ import annotations

from torch import nn

from ..errors import DwrpruneError
from ..registry import Registry
from .entry import ModelEntry, ModelFn
from .timm_models import timm_entry, timm_names
from .torchvision_models import torchvision_entry, torchvision_names

MODELS: Registry = Registry(
    "model", "or any torchvision classification model as 'tv/NAME' (e.g. tv/resnet50; "
    "`dwrprune models --torchvision` lists them), or any timm model as 'timm/NAME'")


def register_model(name: str, *, min_resolution: int, description: str = "", tiny: bool = False):
    """Decorator: add a constructor to the registry under ``name``."""

    def wrap(fn: ModelFn) -> ModelFn:
        MODELS.register(ModelEntry(name, fn, min_resolution, description, tiny))
        return fn

    return wrap


def list_models(include_torchvision: bool = False, include_tiny: bool = True,
                include_timm: bool = False) -> list[str]:
    """Registered model names; with ``include_torchvision`` also every ``tv/NAME``, with
    ``include_timm`` every ``timm/NAME``."""
    names = sorted(n for n in MODELS if include_tiny or not MODELS.get(n).tiny)
    if include_torchvision:
        names += [f"tv/{n}" for n in torchvision_names()]
    if include_timm:
        names += [f"timm/{n}" for n in timm_names()]
    return names


def get_entry(name: str) -> ModelEntry:
    """The registry entry for ``name`` (torchvision names included), or a clear error."""
    if isinstance(name, str) and name.startswith("tv/"):
        return torchvision_entry(name[3:])
    if isinstance(name, str) and name.startswith("timm/"):
        return timm_entry(name[5:])
    return MODELS.get(name)


def create_model(name: str, num_classes: int = 10, in_channels: int = 3, **kwargs) -> nn.Module:
    """Build a freshly initialised model by registry name."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise DwrpruneError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise DwrpruneError(f"in_channels must be a positive integer, got {in_channels!r}")
    entry = get_entry(name)
    return entry.fn(num_classes=num_classes, in_channels=in_channels, **kwargs)


def check_resolution(name: str, resolution: int) -> None:
    """Raise a clear error if ``resolution`` is below what model ``name`` accepts."""
    entry = get_entry(name)
    if not isinstance(resolution, int) or resolution < entry.min_resolution:
        raise DwrpruneError(
            f"input resolution {resolution!r} is below the minimum {entry.min_resolution} px "
            f"that model {name!r} accepts"
        )
