"""Every timm model, as ``timm/NAME`` (optional: ``pip install 'dwrprune[timm]'``).

Built with ``pretrained=False`` (nothing is downloaded; a user brings weights through a
checkpoint), the requested ``num_classes`` and ``in_chans``.  A model whose pretrained config
fixes its input size (vision transformers with absolute position embeddings, say) accepts
only that size; every other model accepts inputs from 32 px.
"""

from __future__ import annotations

from functools import lru_cache

from ..errors import DwrpruneError
from .entry import ModelEntry

PIN = "timm==1.0.31"


def _timm():
    try:
        import timm
    except ImportError:
        raise DwrpruneError(f"timm models need timm: pip install 'dwrprune[timm]' ({PIN})") \
            from None
    return timm


@lru_cache(maxsize=1)
def timm_names() -> tuple[str, ...]:
    return tuple(sorted(_timm().list_models()))


def timm_entry(name: str) -> ModelEntry:
    timm = _timm()
    if name not in timm_names():
        raise DwrpruneError(
            f"unknown timm model {name!r}; examples: resnet18, mobilenetv3_small_100, "
            "efficientnet_b0, convnext_atto (`dwrprune models --timm` lists all)")

    def build(num_classes: int = 10, in_channels: int = 3, **kwargs):
        return timm.create_model(name, pretrained=False, num_classes=num_classes,
                                 in_chans=in_channels, **kwargs)

    cfg = timm.get_pretrained_cfg(name)
    fixed = cfg is not None and getattr(cfg, "fixed_input_size", False)
    min_res = int(cfg.input_size[-1]) if fixed else 32
    return ModelEntry(f"timm/{name}", build, min_res, f"timm {name}")


__all__ = ["PIN", "timm_entry", "timm_names"]
