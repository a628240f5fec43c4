"""Which channels and which blocks go: small interchangeable criterion objects.

Channel criteria score every channel of a Torch-Pruning group (higher = keep).  They wrap
Torch-Pruning's own importance estimators; Taylor needs gradients, which ``prepare``
computes on a few training batches before pruning.  Depth criteria score every removable
block (higher = keep): the data-free weight-norm criterion, and the validation-loss increase
when the block alone is removed, measured after EagleEye BatchNorm re-calibration.
"""

from __future__ import annotations

import copy
from typing import Protocol

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..errors import DwrpruneError
from ..registry import Registry
from .autobot import AutoBotCriterion
from .blocks import BLOCK_KINDS, Block, get_module

CHANNEL_CRITERIA: Registry = Registry("channel criterion")
DEPTH_CRITERIA: Registry = Registry("depth criterion", "'weight_norm' needs no data")


class ChannelCriterion(Protocol):
    """Scores every channel of a Torch-Pruning group (higher = keep).  ``needs``: the data it
    must be given (``"train"``: a training loader), empty for data-free criteria.  Register a
    new one with ``@CHANNEL_CRITERIA.register`` (see :mod:`dwrprune.registry`); one with
    needs builds itself with a ``from_context(**context)`` classmethod."""

    name: str
    needs: frozenset[str]

    def group_scores(self, group, dg) -> Tensor: ...


class _TPImportance:
    """A channel criterion backed by a Torch-Pruning importance estimator."""

    name = "base"
    needs: frozenset[str] = frozenset()

    def __init__(self, importance):
        self.importance = importance

    def group_scores(self, group, dg) -> Tensor:
        return self.importance(group)


@CHANNEL_CRITERIA.register
class L1(_TPImportance):
    name = "l1"

    def __init__(self):
        super().__init__(tp.importance.GroupMagnitudeImportance(p=1))


@CHANNEL_CRITERIA.register
class L2(_TPImportance):
    name = "l2"

    def __init__(self):
        super().__init__(tp.importance.GroupMagnitudeImportance(p=2))


@CHANNEL_CRITERIA.register
class BNScale(_TPImportance):
    name = "bn_scale"

    def __init__(self):
        super().__init__(tp.importance.BNScaleImportance())

    def group_scores(self, group, dg) -> Tensor:
        s = self.importance(group)
        if s is None:  # group without BatchNorm: fall back to L1 so nothing is skipped
            s = tp.importance.GroupMagnitudeImportance(p=1)(group)
        return s


@CHANNEL_CRITERIA.register
class Random(_TPImportance):
    name = "random"

    def __init__(self, seed: int = 0):
        super().__init__(None)
        self.gen = torch.Generator().manual_seed(seed)

    @classmethod
    def from_context(cls, seed: int = 0, **_) -> Random:
        return cls(seed)

    def group_scores(self, group, dg) -> Tensor:
        return torch.rand(len(group[0][1]), generator=self.gen)


@CHANNEL_CRITERIA.register
class Taylor(_TPImportance):
    """First-order Taylor importance |w * dL/dw| summed per channel (Molchanov et al.)."""

    name = "taylor"
    needs = frozenset({"train"})

    def __init__(self, loader: DataLoader | None = None, batches: int = 4):
        super().__init__(tp.importance.GroupTaylorImportance())
        self.loader, self.batches = loader, batches

    @classmethod
    def from_context(cls, train_loader=None, **_) -> Taylor:
        return cls(train_loader)

    def prepare(self, model: nn.Module, w: float = 1.0) -> None:
        if self.loader is None:
            raise DwrpruneError("the taylor channel criterion needs training data "
                                "(pass a loader, or --data on the CLI)")
        model.eval()
        model.zero_grad(set_to_none=True)
        device = next(model.parameters()).device
        for i, (x, y) in enumerate(self.loader):
            if i >= self.batches:
                break
            F.cross_entropy(model(x.to(device)), y.to(device)).backward()


CHANNEL_CRITERIA.register(AutoBotCriterion)  # defined beside the rest of AutoBot


def make_channel_criterion(name: str | ChannelCriterion, **context) -> ChannelCriterion:
    """A channel criterion by registered name (built from ``context``: ``train_loader``, ...)
    or as given."""
    return CHANNEL_CRITERIA.create(name, **context)


# ---------------------------------------------------------------------------- depth criteria
class DepthCriterion(Protocol):
    """Scores every removable block (higher = keep); ``needs`` as for channel criteria."""

    name: str
    needs: frozenset[str]

    def block_scores(self, model: nn.Module, blocks: list[Block]) -> list[float]: ...


@DEPTH_CRITERIA.register
class WeightNormDepth:
    """Data-free: the mean |gamma| of the last BatchNorm in a block's branch (the scale of what
    the block adds to the residual stream), else the mean |weight| of its last conv."""

    name = "weight_norm"
    needs: frozenset[str] = frozenset()

    def block_scores(self, model: nn.Module, blocks: list[Block]) -> list[float]:
        names = [n for n, _ in model.named_modules()]
        scores = []
        for b in blocks:
            mods = [get_module(model, n) for n in BLOCK_KINDS.create(b.kind).branch(b, names)]
            bns = [m for m in mods if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]
            convs = [m for m in mods if isinstance(m, (nn.Conv2d, nn.Linear))]
            if bns:
                scores.append(bns[-1].weight.detach().abs().mean().item())
            elif convs:
                scores.append(convs[-1].weight.detach().abs().mean().item())
            else:
                scores.append(0.0)
        return scores


@DEPTH_CRITERIA.register
class LossIncreaseDepth:
    """Validation-loss increase when the block alone is removed, after BatchNorm
    re-calibration (EagleEye) of both the intact and the reduced model."""

    name = "loss"
    needs = frozenset({"train", "val"})

    def __init__(self, train_loader: DataLoader, val_loader: DataLoader,
                 recal_batches: int = 20, eval_batches: int = 10):
        self.train_loader, self.val_loader = train_loader, val_loader
        self.recal_batches, self.eval_batches = recal_batches, eval_batches

    @classmethod
    def from_context(cls, train_loader, val_loader, recal_batches: int = 20,
                     eval_batches: int = 10, **_) -> LossIncreaseDepth:
        return cls(train_loader, val_loader, recal_batches, eval_batches)

    def _loss(self, model: nn.Module) -> float:
        from ..training.engine import evaluate, recalibrate_batchnorm

        recalibrate_batchnorm(model, self.train_loader, self.recal_batches)
        return evaluate(model, self.val_loader, max_batches=self.eval_batches).loss

    def block_scores(self, model: nn.Module, blocks: list[Block]) -> list[float]:
        from .surgery import drop_blocks

        base = self._loss(copy.deepcopy(model))
        example = next(iter(self.val_loader))[0][:1].to(next(model.parameters()).device)
        scores = []
        for b in blocks:
            m = copy.deepcopy(model)
            drop_blocks(m, [b], example)
            scores.append(self._loss(m) - base)
        return scores


def make_depth_criterion(name: str | DepthCriterion, **context) -> DepthCriterion:
    """A depth criterion by registered name (built from ``context``: ``train_loader``,
    ``val_loader``, ...) or as given."""
    return DEPTH_CRITERIA.create(name, **context)
