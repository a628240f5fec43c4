"""Shrink a model to a (depth, width, resolution) point, and say exactly what that costs.

``Shrinker(model)`` analyses a model once (:class:`dwrprune.pruning.analysis.Analysis`: removable
blocks, channel groups, per-layer geometry per resolution), ranks its blocks with a depth
criterion, and then answers two questions:

* ``macs(d, w, r)`` -- the exact MACs of the model ``shrink`` would build, as arithmetic over
  cached per-layer records (no model is built), for the solver to call many times;
* ``shrink(d, w, r)`` -- a physically smaller copy plus a JSON spec of what was kept.

How the width budget is spread over layers is a strategy object (:class:`UniformWidth`, or
AutoBot's learned widths, :class:`dwrprune.pruning.autobot.AutoBotWidth`); criteria and strategies
declare the data they need (:func:`data_needs`).  The input model is never modified.
Resolution is not a network change: the pruned model records its input side in the spec, and
the data pipeline resizes images to it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from torch import nn
from torch.utils.data import DataLoader

from ..cost import count_macs
from ..cost.rounding import check_fraction, kept_blocks, kept_channels, kept_resolution
from ..errors import DwrpruneError
from ..registry import Registry
from ..training.engine import recalibrate_batchnorm
from .analysis import Analysis, ShrinkResult
from .autobot import AutoBotWidth
from .blocks import BLOCK_KINDS, Block, remove_blocks
from .criteria import (
    CHANNEL_CRITERIA,
    DEPTH_CRITERIA,
)
from .surgery import drop_blocks, layer_snapshot, prune_width, record_layer_changes


@dataclass
class Plan:
    """The discrete point a continuous (d, w, r) maps to."""

    d: float
    w: float
    r: float
    resolution: int
    kept_blocks: int
    removed: list[Block] = field(default_factory=list)


def _compose_arch(spec: dict, depth_only: dict, pruned: nn.Module,
                  removed: list[Block]) -> dict:
    """The arch of ``pruned`` relative to the *original* constructor's model.

    For a model that was already pruned (iterative sample collection shrinks its fine-tuned
    models further), the removed blocks accumulate and the layer changes are recorded against
    a fresh model with all of them removed, so one spec still rebuilds the result.
    """
    old = spec.get("arch") or {}
    all_removed = [Block.from_dict(b) for b in old.get("removed_blocks", [])] + removed
    reference = depth_only
    name = spec["model"]["name"]
    if old and name:
        from ..models import create_model

        reference = create_model(name, num_classes=spec["model"]["num_classes"],
                                 in_channels=spec["model"]["in_channels"])
        remove_blocks(reference, all_removed)
    return {"removed_blocks": [b.to_dict() for b in all_removed],
            "layers": record_layer_changes(reference, pruned)}


class WidthAllocation(Protocol):
    """How a width fraction ``w`` becomes channel counts per layer.  ``apply`` prunes the
    (depth-pruned) ``model`` in place or returns a new one; ``exact_cost``: the result costs
    exactly what :meth:`Shrinker.macs` says (else at most that, measured afterwards)."""

    name: str
    needs: frozenset[str]
    exact_cost: bool

    def apply(self, model: nn.Module, shrinker: Shrinker, plan: Plan) -> nn.Module: ...


class UniformWidth:
    """Every coupled channel group keeps the same fraction ``w``, chosen by the criterion."""

    name = "uniform"
    needs: frozenset[str] = frozenset()
    exact_cost = True

    def apply(self, model: nn.Module, shrinker: Shrinker, plan: Plan) -> nn.Module:
        prune_width(model, shrinker.example_input(shrinker.trace_resolution), plan.w,
                    shrinker.channel_criterion, [shrinker.classifier_after(plan.removed)],
                    shrinker.round_to, shrinker.whole_groups)
        return model


WIDTH_ALLOCATIONS: Registry = Registry("width allocation")
WIDTH_ALLOCATIONS.register(UniformWidth)
WIDTH_ALLOCATIONS.register(AutoBotWidth)  # defined beside the rest of AutoBot


def data_needs(depth_criterion="weight_norm", channel_criterion="l1",
               width_allocation="uniform") -> frozenset[str]:
    """The data (``"train"``, ``"val"``) these criteria and this allocation need (names or
    objects; unknown names are an error): what each registered entry declares."""
    return (DEPTH_CRITERIA.needs(depth_criterion) | CHANNEL_CRITERIA.needs(channel_criterion)
            | WIDTH_ALLOCATIONS.needs(width_allocation))


class Shrinker(Analysis):
    """Analyse ``model`` once; shrink it to any (d, w, r) and answer exact cost queries.

    Analysis options (``resolution``, ``in_channels``, ``blocks``, ``transitions``,
    ``min_resolution``): see :class:`Analysis`.  ``depth_criterion`` / ``channel_criterion``:
    objects or registered names; ``criterion_data``: ``{"train_loader": ..., "val_loader":
    ...}`` for those that need data.  ``block_order``: a ranking computed earlier (least
    important first), with ``block_order_criterion`` naming what ranked it (recorded in the
    spec's provenance).  ``width_allocation``: a :class:`WidthAllocation` or "uniform" /
    "autobot" (AutoBot learns per-layer widths whose exact MACs do not exceed the uniform
    model's; the cost query then returns that uniform bound, and the result reports its
    measured MACs).
    """

    def __init__(self, model: nn.Module, *, resolution: int | None = None,
                 in_channels: int | None = None, blocks: list[str] | None = None,
                 transitions: bool = False, depth_criterion="weight_norm",
                 channel_criterion="l1", round_to: int | None = None,
                 min_resolution: int | None = None, criterion_data: dict | None = None,
                 block_order: list[str] | None = None, block_order_criterion: str | None = None,
                 width_allocation="uniform", autobot_steps: int = 200, ignored_layers=None):
        super().__init__(model, resolution=resolution, in_channels=in_channels, blocks=blocks,
                         transitions=transitions, min_resolution=min_resolution,
                         ignored_layers=ignored_layers)
        if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int)
                                     or round_to < 1):
            raise DwrpruneError(f"round_to must be a whole number >= 1, got {round_to!r}")
        self.round_to = round_to
        context = {**(criterion_data or {}), "autobot_steps": autobot_steps}
        self.width_allocation = WIDTH_ALLOCATIONS.create(width_allocation, **context)
        self.depth_criterion = DEPTH_CRITERIA.create(depth_criterion, **context)
        self.channel_criterion = CHANNEL_CRITERIA.create(channel_criterion, **context)
        self._order: list[Block] | None = None
        self.block_order_criterion = None
        if block_order is not None:  # a ranking computed earlier (saved with a run)
            by_name = {b.name: b for b in self.blocks}
            if sorted(block_order) != sorted(by_name):
                raise DwrpruneError(f"block_order names {sorted(block_order)} but the model's "
                                    f"removable blocks are {sorted(by_name)}")
            self._order = [by_name[n] for n in block_order]
            self.block_order_criterion = block_order_criterion

    def rounded(self, multiple: int | None) -> Shrinker:
        """This shrinker with every pruned channel count rounded down to a multiple of
        ``multiple`` (None, or this shrinker's own rounding: itself).  The copy shares the
        block ranking, channel groups and criteria; only the rounding differs.

        >>> from dwrprune.models import create_model
        >>> shr = Shrinker(create_model("resnet20"), resolution=32,
        ...                depth_criterion="weight_norm")
        >>> [c for _, _, c in shr.rounded(8).kept_layers(1, 0.7, 1)[1]][:2]
        [8, 8]
        """
        if multiple is None or multiple == self.round_to:
            return self
        if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
            raise DwrpruneError(f"round_to must be a whole number >= 1, got {multiple!r}")
        out = copy.copy(self)
        out.round_to = multiple
        return out

    @property
    def depth_criterion_name(self) -> str:
        """What ranked the blocks: the saved ranking's criterion, else this criterion."""
        return self.block_order_criterion or getattr(self.depth_criterion, "name", "?")

    def block_order(self) -> list[Block]:
        """Removable blocks, least important first (cached; computed by the criterion)."""
        if self._order is None:
            scores = self.depth_criterion.block_scores(self.model, self.blocks)
            ranked = sorted(range(len(self.blocks)), key=lambda i: (scores[i], i))
            self._order = [self.blocks[i] for i in ranked]
            self.block_scores = {self.blocks[i].name: float(scores[i]) for i in ranked}
        return self._order


    # ------------------------------------------------------------------------ planning
    def plan(self, d: float, w: float, r: float) -> Plan:
        d, w, r = (check_fraction(n, v) for n, v in (("d", d), ("w", w), ("r", r)))
        res = kept_resolution(self.base_resolution, r)
        if res < self.min_resolution:
            raise DwrpruneError(
                f"r={r:g} gives a {res}px input, below this model's minimum "
                f"{self.min_resolution}px (base {self.base_resolution}px): use "
                f"r >= {self.min_resolution / self.base_resolution:.3f}")
        n = len(self.blocks)
        keep = kept_blocks(n, d)
        if keep < n and n == 0:
            raise DwrpruneError("no removable blocks")
        if n == 0 and d < 1:
            raise DwrpruneError(
                f"{type(self.model).__name__} has no removable blocks (residual "
                "input + branch(input) modules, or shape-preserving conv-BN-ReLU units in a "
                "plain network), so d must be 1; pass blocks=[...] to name some explicitly")
        removed = self.block_order()[: n - keep] if keep < n else []
        return Plan(d, w, r, res, keep, list(removed))

    def _formula(self, d: float, w: float, r: float):
        """The plan of (d, w, r), the MACs formula at its resolution, the kept channel count
        of each group (none when w is 1: the Torch-Pruning graph is not even built) and the
        layers removed with the blocks."""
        plan = self.plan(d, w, r)
        dropped = self._dropped_layers(plan.removed)
        dense = [b for b in plan.removed if b.kind == "dense"]
        if w >= 1.0 and not dense:
            return plan, self.channel_cost(plan.resolution, False), (), dropped
        groups = self.groups()
        counts = [kept_channels(g.size, w, g.ch_groups, self.round_to) if w < 1.0 else g.size
                  for g in groups]
        for b in dense:  # a removed dense layer's channels leave every layer that read them
            counts[self._group_of(b.members[0], groups)] = 0
        return plan, self.channel_cost(plan.resolution), counts, dropped

    @staticmethod
    def _group_of(layer: str, groups) -> int:
        for i, g in enumerate(groups):
            if any(name == layer and side == "out" for name, side, _ in g.members):
                return i
        raise DwrpruneError(f"the channels of dense layer output {layer!r} form no channel "
                            "group Torch-Pruning can trace, so removing it cannot be costed")

    def macs(self, d: float, w: float, r: float) -> int:
        """Exact MACs of ``shrink(d, w, r)``'s model, without building it."""
        return self._macs((d, w, r), *self._formula(d, w, r))

    def _macs(self, point, plan, cost, counts, dropped) -> int:
        if self.geometry(plan.resolution)[1]:  # ops outside conv/linear (e.g. attention
            return self.shrink(*point, recalibrate=None).macs  # matmuls): build and count
        return cost(counts, dropped)

    def structure(self, d: float, w: float, r: float) -> dict:
        """Exact MACs and structure (output elements, weights, layers) of ``shrink(d, w,
        r)``'s model, without building it: the features of a latency model."""
        plan, cost, counts, dropped = self._formula(d, w, r)
        return {"macs": self._macs((d, w, r), plan, cost, counts, dropped),
                "resolution": plan.resolution, **cost.structure(counts, dropped)}

    def kept_layers(self, d: float, w: float, r: float) -> tuple[int, list]:
        """The input side of ``shrink(d, w, r)``'s model and its conv and linear layers, each
        as (geometry in the unpruned model, kept input channels, kept output channels)."""
        plan, cost, counts, dropped = self._formula(d, w, r)
        return plan.resolution, cost.kept(counts, dropped)

    def _dropped_layers(self, removed: list[Block]) -> set[str]:
        names = [g.name for g in self.geometry(self.base_resolution)[0]]
        dropped = set()
        for b in removed:
            dropped.update(BLOCK_KINDS.create(b.kind).branch(b, names))
        return dropped

    # ------------------------------------------------------------------------ surgery
    def shrink(self, d: float = 1.0, w: float = 1.0, r: float = 1.0, *,
               recalibrate: DataLoader | Callable[[int], DataLoader] | None = None,
               recal_batches: int = 50) -> ShrinkResult:
        """A physically smaller copy of the model at (d, w, r), with its spec.

        ``recalibrate``: a loader (or ``resolution -> loader``) of training images at the new
        resolution; BatchNorm statistics are re-estimated on ``recal_batches`` of them.
        """
        if isinstance(recal_batches, bool) or not isinstance(recal_batches, int) or \
                recal_batches < 0:
            raise DwrpruneError(f"recal_batches must be a whole number >= 0, got "
                                f"{recal_batches!r}")
        plan = self.plan(d, w, r)
        model = copy.deepcopy(self.model)
        before = layer_snapshot(model)
        drop_blocks(model, plan.removed, self.example_input(self.trace_resolution))
        # the reference the spec's layer changes are recorded against: the blocks removed,
        # every remaining layer as built (a dense layer's readers, resized, are changes)
        depth_only = {n: before[n] if n in before and before[n][0] is v[0] else v
                      for n, v in layer_snapshot(model).items()}
        alloc = self.width_allocation
        if plan.w < 1.0:
            try:
                model = alloc.apply(model, self, plan)
            except DwrpruneError:
                raise
            except Exception as e:  # noqa: BLE001
                raise DwrpruneError(f"width pruning failed for {type(model).__name__} at "
                                    f"w={w:g}: {type(e).__name__}: {e}") from None
        spec = copy.deepcopy(self.spec)
        spec["arch"] = self._arch(plan, depth_only, model)
        spec["input"]["resolution"] = plan.resolution
        recal = 0
        if recalibrate is not None and recal_batches > 0:
            loader = recalibrate(plan.resolution) if callable(recalibrate) else recalibrate
            recalibrate_batchnorm(model, loader, recal_batches)
            recal = min(recal_batches, len(loader))
        spec["provenance"] = {
            "depth_criterion": self.depth_criterion_name if plan.removed or
            spec["arch"]["removed_blocks"] else None,
            "channel_criterion": getattr(self.channel_criterion, "name", "?")
            if spec["arch"]["point"]["w"] < 1.0 else None,
            "width_allocation": alloc.name, "round_to": self.round_to,
            "bn_recalibration_batches": recal}
        model.eval()
        model.dwrprune_spec = spec
        # The cost query is exact by construction (tests compare it with FlopCounterMode);
        # count directly only where the formula does not model every op.
        exact_formula = not self.geometry(plan.resolution)[1] and (
            alloc.exact_cost or plan.w >= 1.0)
        macs = (self.macs(d, w, r) if exact_formula
                else count_macs(model, plan.resolution, self.in_channels))
        return ShrinkResult(model, spec, macs,
                            sum(p.numel() for p in model.parameters()))

    def _arch(self, plan: Plan, depth_only: dict, model: nn.Module) -> dict:
        """The spec's ``arch``: what was removed and resized, relative to the original."""
        old = self.spec.get("arch") or {}
        old_point = old.get("point", {"d": 1.0, "w": 1.0, "r": 1.0})
        base_res = old.get("base_resolution", self.base_resolution)
        removable = old.get("removable_blocks", [b.name for b in self.blocks])
        n_removed = len(old.get("removed_blocks", [])) + len(plan.removed)
        arch = {
            # (d, w, r) relative to the original model; w composes multiplicatively when a
            # pruned model is pruned again, d and r are exact counts.
            "point": {"d": (len(removable) - n_removed) / len(removable) if removable else 1.0,
                      "w": old_point["w"] * plan.w, "r": plan.resolution / base_res},
            "base_resolution": base_res,
            "removable_blocks": removable,
            "width": {"w": old_point["w"] * plan.w,
                      "criterion": getattr(self.channel_criterion, "name", "?"),
                      "round_to": self.round_to},
            "depth_criterion": self.depth_criterion_name,
            **_compose_arch(self.spec, depth_only, model, plan.removed),
        }
        if not old:  # realised fractions: whole blocks and whole pixels
            n = len(self.blocks)
            arch["point"] = {"d": plan.kept_blocks / n if n else 1.0, "w": plan.w,
                             "r": plan.resolution / self.base_resolution}
        arch["requested"] = {"d": plan.d, "w": plan.w, "r": plan.r}
        return arch

    def classifier_after(self, removed: list[Block]) -> str:
        for b in removed:  # a transition's shortcut moves under "<block>.0"
            if b.shortcut and self.classifier.startswith(b.shortcut):
                return b.name + ".0" + self.classifier[len(b.shortcut):]
        return self.classifier


def shrink(model: nn.Module, d: float = 1.0, w: float = 1.0, r: float = 1.0,
           **kwargs) -> ShrinkResult:
    """Return a physically smaller copy of ``model`` at (d, w, r) plus its JSON spec.

    Keywords go to :class:`Shrinker` (blocks, transitions, depth_criterion,
    channel_criterion, round_to, resolution, in_channels, min_resolution, criterion_data) or
    to :meth:`Shrinker.shrink` (recalibrate, recal_batches).
    """
    shrink_kw = {k: kwargs.pop(k) for k in ("recalibrate", "recal_batches") if k in kwargs}
    return Shrinker(model, **kwargs).shrink(d, w, r, **shrink_kw)


def shrink_cost(model: nn.Module, d: float, w: float, r: float, **kwargs) -> int:
    """Exact MACs of ``shrink(model, d, w, r)`` without building it (one-off convenience)."""
    return Shrinker(model, **kwargs).macs(d, w, r)
