"""Every torchvision classification model, as ``tv/NAME``.

Models are built with ``weights=None`` (nothing can be downloaded here; a user brings weights
through a checkpoint), the requested ``num_classes``, and the first convolution rebuilt for
``in_channels`` when it differs from 3.  Auxiliary heads (GoogLeNet, Inception) are turned
off so the model returns one tensor.
"""

from __future__ import annotations

from functools import lru_cache

import torchvision
from torch import nn

from ..errors import DwrpruneError
from .entry import ModelEntry

# Smallest input side that runs.  Fixed-size vision transformers accept only their own size.
_MIN_RESOLUTION = {"inception_v3": 75, "googlenet": 32}
_FIXED_SIZE_PREFIXES = ("vit_",)


@lru_cache(maxsize=1)
def torchvision_names() -> tuple[str, ...]:
    return tuple(sorted(torchvision.models.list_models(module=torchvision.models)))


def replace_first_conv(model: nn.Module, in_channels: int) -> None:
    """Swap the first Conv2d for one with ``in_channels`` inputs, other settings equal."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.in_channels == in_channels:
                    return
                new = nn.Conv2d(in_channels, child.out_channels, child.kernel_size, child.stride,
                                child.padding, child.dilation, child.groups,
                                child.bias is not None, child.padding_mode)
                setattr(parent, name, new)
                return
    raise DwrpruneError(f"{type(model).__name__} has no Conv2d whose input channels can be set")


def torchvision_entry(name: str) -> ModelEntry:
    if name not in torchvision_names():
        raise DwrpruneError(
            f"unknown torchvision classification model {name!r}; examples: resnet18, resnet50, "
            "mobilenet_v2, efficientnet_b0 (`dwrprune models --torchvision` lists all)"
        )

    def build(num_classes: int = 10, in_channels: int = 3, **kwargs) -> nn.Module:
        if name in ("googlenet", "inception_v3"):
            kwargs.setdefault("aux_logits", False)
            kwargs.setdefault("init_weights", True)
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
        replace_first_conv(model, in_channels)
        return model

    min_res = 224 if name.startswith(_FIXED_SIZE_PREFIXES) else _MIN_RESOLUTION.get(name, 32)
    return ModelEntry(f"tv/{name}", build, min_res, f"torchvision {name}")
