"""What a model costs, counted: MACs and parameters.

MACs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on one forward pass of a
single image and reported as FLOPs / 2, as the pruning literature does (convolutions and
linear layers; BatchNorm, activations, pooling and additions are not counted there either).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..errors import DwrpruneError


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, resolution: int, in_channels: int | None = None) -> int:
    """Multiply-accumulates of one forward pass on a 1 x C x R x R input."""
    if in_channels is None:
        in_channels = first_conv_in_channels(model)
    was_training = model.training
    model.eval()
    x = torch.zeros(1, in_channels, resolution, resolution,
                    device=next(model.parameters()).device)
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            model(x)
    except RuntimeError as e:
        raise DwrpruneError(
            f"model does not run on a {in_channels}x{resolution}x{resolution} input: "
            f"{str(e).splitlines()[0][:200]}") from None
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


@dataclass
class Counts:
    macs: int
    params: int


@torch.no_grad()
def count(model: nn.Module, example_inputs: torch.Tensor) -> Counts:
    """MACs (per image: FLOPs / 2 of one forward pass, as :func:`count_macs`) and
    parameters of ``model`` on inputs shaped like ``example_inputs`` (N, C, H, W)."""
    if not isinstance(example_inputs, torch.Tensor) or example_inputs.dim() < 2:
        raise DwrpruneError("example_inputs must be an input batch tensor, e.g. (1, 3, 32, 32)")
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            model(example_inputs[:1].to(next(model.parameters()).device))
    except RuntimeError as e:
        raise DwrpruneError(f"model does not run on example_inputs of shape "
                            f"{tuple(example_inputs.shape)}: "
                            f"{str(e).splitlines()[0][:200]}") from None
    finally:
        model.train(was_training)
    return Counts(counter.get_total_flops() // 2, count_params(model))


def first_conv_in_channels(model: nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    raise DwrpruneError(f"{type(model).__name__} has no Conv2d; cannot infer input channels")


def format_count(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f}"
