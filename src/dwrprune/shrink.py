"""Shrink a model to a (depth, width, resolution) point, and say exactly what that costs.

``Shrinker(model)`` analyses a model once (removable blocks, block ranking, channel groups,
per-layer geometry per resolution) and then answers two questions:

* ``macs(d, w, r)`` -- the exact MACs of the model ``shrink`` would build, as arithmetic over
  cached per-layer records (no model is built), for the solver to call many times;
* ``shrink(d, w, r)`` -- a physically smaller copy plus a JSON spec of what was kept.

The input model is never modified.  Resolution is not a network change: the pruned model
records its input side in the spec, and the data pipeline resizes images to it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from .blocks import Block, remove_blocks, resolve_blocks
from .costmath import check_fraction, kept_blocks, kept_channels, kept_resolution
from .criteria import make_channel_criterion, make_depth_criterion
from .errors import DwrpruneError
from .surgery import (
    PRUNABLE,
    GroupInfo,
    build_graph,
    describe_groups,
    layer_snapshot,
    output_layer,
    prune_width,
    record_layer_changes,
)


@dataclass(frozen=True)
class LayerGeom:
    """One conv/linear layer at one resolution: what its MACs depend on."""

    name: str
    kind: str  # conv | linear
    in_ch: int
    out_ch: int
    groups: int
    kernel: int
    positions: int  # output H*W for convs, rows for linear layers


class ChannelCost:
    """MACs of the conv and linear layers as a function of how many channels each coupled
    group keeps.  One piece of arithmetic serves both cost models: with integer counts it is
    the exact MACs of the physically pruned model (:meth:`Shrinker.macs`), with soft counts
    (tensors) it is AutoBot's differentiable cost."""

    def __init__(self, layers: list[LayerGeom], groups: list[GroupInfo]):
        self.sizes = [g.size for g in groups]
        terms: dict[tuple[str, str], list[tuple[int, int]]] = {}
        for gi, info in enumerate(groups):
            for name, side, factor in info.members:
                terms.setdefault((name, side), []).append((gi, factor))
        self.layers = [(g, terms.get((g.name, "in"), []), terms.get((g.name, "out"), []))
                       for g in layers]

    def __call__(self, counts=(), dropped: frozenset[str] | set[str] = frozenset()):
        # float64 for tensors: a ResNet-50 costs ~1e9 MACs, beyond float32's exact integers
        counts = [c.double() if isinstance(c, torch.Tensor) else c for c in counts]
        total = 0
        for g, ins, outs in self.layers:
            if g.name in dropped:
                continue
            cin = g.in_ch - sum(f * (self.sizes[gi] - counts[gi]) for gi, f in ins)
            cout = g.out_ch - sum(f * (self.sizes[gi] - counts[gi]) for gi, f in outs)
            if g.groups > 1 and g.groups == g.in_ch == g.out_ch:  # depthwise: in = out = groups
                cout, per_group = min(cin, cout), 1
            else:  # every output needs (in / groups) * k_h * k_w products
                per_group = cin // g.groups if isinstance(cin, int) else cin / g.groups
            total = total + g.positions * g.kernel * per_group * cout
        return total


@dataclass
class Plan:
    """The discrete point a continuous (d, w, r) maps to."""

    d: float
    w: float
    r: float
    resolution: int
    kept_blocks: int
    removed: list[Block] = field(default_factory=list)


@dataclass
class ShrinkResult:
    model: nn.Module
    spec: dict
    macs: int
    params: int


def _model_spec(model: nn.Module, resolution: int | None, in_channels: int | None) -> dict:
    spec = getattr(model, "dwrprune_spec", None)
    if spec is not None:
        return copy.deepcopy(spec)
    from .checkpoint import make_spec
    from .cost import first_conv_in_channels

    if resolution is None:
        raise DwrpruneError("a model without a dwrprune spec needs resolution=<input side>")
    return make_spec(None, 0, in_channels or first_conv_in_channels(model), resolution)


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
        from .models import create_model

        reference = create_model(name, num_classes=spec["model"]["num_classes"],
                                 in_channels=spec["model"]["in_channels"])
        remove_blocks(reference, all_removed)
    return {"removed_blocks": [b.to_dict() for b in all_removed],
            "layers": record_layer_changes(reference, pruned)}


class Shrinker:
    """Analyse ``model`` once; shrink it to any (d, w, r) and answer exact cost queries.

    ``blocks``: removable block names (default: detected from the traced graph).
    ``transitions``: also let depth pruning replace stage-transition blocks by their
    projection shortcut.  ``depth_criterion`` / ``channel_criterion``: objects or names.
    ``min_resolution``: the smallest input side allowed (default: the registry's minimum).
    ``block_order``: a precomputed ranking of the removable blocks (least important first).
    ``width_allocation``: "uniform" (every group keeps fraction w) or "autobot" (AutoBot
    learns a per-layer allocation whose exact MACs do not exceed the uniform model's; the
    cost query then returns that uniform bound, and the result reports its measured MACs).
    """

    def __init__(self, model: nn.Module, *, resolution: int | None = None,
                 in_channels: int | None = None, blocks: list[str] | None = None,
                 transitions: bool = False, depth_criterion="weight_norm",
                 channel_criterion="l1", round_to: int | None = None,
                 min_resolution: int | None = None, criterion_data: dict | None = None,
                 block_order: list[str] | None = None, width_allocation: str = "uniform",
                 autobot_steps: int = 200):
        self.model = model
        self.spec = _model_spec(model, resolution, in_channels)
        self.base_resolution = resolution or self.spec["input"]["resolution"]
        self.in_channels = self.spec["model"]["in_channels"]
        name = self.spec["model"]["name"]
        if min_resolution is None:
            from .models import get_entry

            min_resolution = get_entry(name).min_resolution if name else 8
        self.min_resolution = min_resolution
        self.round_to = round_to
        data = criterion_data or {}
        if width_allocation not in ("uniform", "autobot"):
            raise DwrpruneError(f"width_allocation must be 'uniform' or 'autobot', got "
                                f"{width_allocation!r}")
        if width_allocation == "autobot" and data.get("train_loader") is None:
            raise DwrpruneError("width_allocation='autobot' needs training data "
                                "(criterion_data={'train_loader': ...})")
        self.width_allocation, self.autobot_steps = width_allocation, autobot_steps
        self._autobot_loader = data.get("train_loader")
        self.depth_criterion = make_depth_criterion(depth_criterion, **data)
        self.channel_criterion = make_channel_criterion(
            channel_criterion, **({"loader": data.get("train_loader")}
                                  if channel_criterion in ("taylor", "autobot") else {}))
        # Structure (blocks, channel groups) does not depend on the input size for registry
        # models, which all end in adaptive pooling: trace them at a small input, which makes
        # analysis and surgery of large-input models several times cheaper.  (Tracing at a
        # size where a stage shrinks to 1x1 is fine: only channel structure is read.)
        self.trace_resolution = (self.base_resolution if not name else
                                 max(self.min_resolution, min(self.base_resolution, 32)))
        x = self.example_input(self.trace_resolution)
        self.blocks = resolve_blocks(model, x, blocks, transitions)
        self.classifier = output_layer(model, x)
        self._order: list[Block] | None = None
        if block_order is not None:  # a ranking computed earlier (saved with a run)
            by_name = {b.name: b for b in self.blocks}
            if sorted(block_order) != sorted(by_name):
                raise DwrpruneError(f"block_order names {sorted(block_order)} but the model's "
                                    f"removable blocks are {sorted(by_name)}")
            self._order = [by_name[n] for n in block_order]
        self._groups: list[GroupInfo] | None = None
        self._geom: dict[int, tuple[list[LayerGeom], int]] = {}
        self._meta: nn.Module | None = None
        self._costs: dict[tuple[int, bool], ChannelCost] = {}

    # ------------------------------------------------------------------------ analysis
    def example_input(self, resolution: int | None = None) -> torch.Tensor:
        res = resolution or self.base_resolution
        device = next(self.model.parameters()).device
        return torch.zeros(1, self.in_channels, res, res, device=device)

    def block_order(self) -> list[Block]:
        """Removable blocks, least important first (cached; computed by the criterion)."""
        if self._order is None:
            scores = self.depth_criterion.block_scores(self.model, self.blocks)
            ranked = sorted(range(len(self.blocks)), key=lambda i: (scores[i], i))
            self._order = [self.blocks[i] for i in ranked]
            self.block_scores = {self.blocks[i].name: float(scores[i]) for i in ranked}
        return self._order

    def groups(self) -> list[GroupInfo]:
        if self._groups is None:
            probe = copy.deepcopy(self.model)
            dg, groups = build_graph(probe, self.example_input(self.trace_resolution),
                                     [self.classifier])
            self._groups = describe_groups(probe, dg, groups)
        return self._groups

    def _meta_model(self) -> nn.Module:
        """A weightless copy on the meta device: shapes and FLOPs without any arithmetic."""
        if self._meta is None:
            meta = copy.deepcopy(self.model).to("meta").eval()
            for m in meta.modules():  # hooks someone attached (e.g. AutoBot's masks) stay out
                m._forward_hooks.clear()
                m._forward_pre_hooks.clear()
            self._meta = meta
        return self._meta

    def geometry(self, resolution: int) -> tuple[list[LayerGeom], int]:
        """Per-layer geometry at ``resolution`` and the MACs the formula does not model."""
        if resolution not in self._geom:
            model = self._meta_model()
            layers: list[LayerGeom] = []

            def hook(name):
                def f(mod, args, out):
                    if isinstance(mod, nn.Conv2d):
                        layers.append(LayerGeom(name, "conv", mod.in_channels, mod.out_channels,
                                                mod.groups, math.prod(mod.kernel_size),
                                                out.shape[-1] * out.shape[-2]))
                    else:
                        layers.append(LayerGeom(name, "linear", mod.in_features,
                                                mod.out_features, 1, 1,
                                                out.numel() // out.shape[-1]))
                return f

            hooks = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
                     if isinstance(m, PRUNABLE)]
            counter = FlopCounterMode(display=False)
            x = torch.zeros(1, self.in_channels, resolution, resolution, device="meta")
            try:
                with torch.no_grad(), counter:
                    model(x)
            finally:
                for h in hooks:
                    h.remove()
            modelled = ChannelCost(layers, [])()
            self._geom[resolution] = (layers, counter.get_total_flops() // 2 - modelled)
        return self._geom[resolution]

    def channel_cost(self, resolution: int, width_pruned: bool = True) -> ChannelCost:
        """The MACs formula at ``resolution`` (over the channel groups if widths change)."""
        key = (resolution, width_pruned)
        if key not in self._costs:
            self._costs[key] = ChannelCost(self.geometry(resolution)[0],
                                           self.groups() if width_pruned else [])
        return self._costs[key]

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

    def macs(self, d: float, w: float, r: float) -> int:
        """Exact MACs of ``shrink(d, w, r)``'s model, without building it."""
        plan = self.plan(d, w, r)
        layers, unmodelled = self.geometry(plan.resolution)
        if unmodelled:  # ops outside conv/linear (e.g. attention matmuls): build and count
            return self.shrink(d, w, r, recalibrate=None).macs
        if w >= 1.0:  # no channel groups needed: the Torch-Pruning graph is not even built
            return self.channel_cost(plan.resolution, False)(
                dropped=self._dropped_layers(plan.removed))
        counts = [kept_channels(g.size, w, g.ch_groups, self.round_to) for g in self.groups()]
        return self.channel_cost(plan.resolution)(counts, self._dropped_layers(plan.removed))

    def _dropped_layers(self, removed: list[Block]) -> set[str]:
        names = [g.name for g in self.geometry(self.base_resolution)[0]]
        dropped = set()
        for b in removed:
            if b.kind == "plain":
                dropped.update(b.members)
                continue
            keep_prefix = b.shortcut + "." if b.shortcut else None
            for n in names:
                if n.startswith(b.name + ".") and not (
                        keep_prefix and (n.startswith(keep_prefix) or n == b.shortcut)):
                    dropped.add(n)
        return dropped

    # ------------------------------------------------------------------------ surgery
    def shrink(self, d: float = 1.0, w: float = 1.0, r: float = 1.0, *,
               recalibrate: DataLoader | Callable[[int], DataLoader] | None = None,
               recal_batches: int = 50) -> ShrinkResult:
        """A physically smaller copy of the model at (d, w, r), with its spec.

        ``recalibrate``: a loader (or ``resolution -> loader``) of training images at the new
        resolution; BatchNorm statistics are re-estimated on ``recal_batches`` of them.
        """
        from .cost import count_macs
        from .engine import recalibrate_batchnorm

        plan = self.plan(d, w, r)
        model = copy.deepcopy(self.model)
        remove_blocks(model, plan.removed)
        depth_only = layer_snapshot(model)
        try:
            if self.width_allocation == "autobot" and plan.w < 1.0:
                model = self._autobot_width(model, plan)
            else:
                prune_width(model, self.example_input(self.trace_resolution), plan.w,
                            self.channel_criterion, [self._classifier_after(plan.removed)],
                            self.round_to)
        except DwrpruneError:
            raise
        except Exception as e:  # noqa: BLE001
            raise DwrpruneError(f"width pruning failed for {type(model).__name__} at "
                                f"w={w:g}: {type(e).__name__}: {e}") from None
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
            "depth_criterion": getattr(self.depth_criterion, "name", "?"),
            **_compose_arch(self.spec, depth_only, model, plan.removed),
        }
        if not old:  # realised fractions: whole blocks and whole pixels
            n = len(self.blocks)
            arch["point"] = {"d": plan.kept_blocks / n if n else 1.0, "w": plan.w,
                             "r": plan.resolution / self.base_resolution}
        arch["requested"] = {"d": plan.d, "w": plan.w, "r": plan.r}
        spec = copy.deepcopy(self.spec)
        spec["arch"] = arch
        spec["input"]["resolution"] = plan.resolution
        if recalibrate is not None:
            loader = recalibrate(plan.resolution) if callable(recalibrate) else recalibrate
            recalibrate_batchnorm(model, loader, recal_batches)
        model.eval()
        model.dwrprune_spec = spec
        # The cost query is exact by construction (tests compare it with FlopCounterMode);
        # count directly only where the formula does not model every op.
        exact_formula = (not self.geometry(plan.resolution)[1]
                         and not (self.width_allocation == "autobot" and plan.w < 1.0))
        macs = (self.macs(d, w, r) if exact_formula
                else count_macs(model, plan.resolution, self.in_channels))
        return ShrinkResult(model, spec, macs,
                            sum(p.numel() for p in model.parameters()))

    def _autobot_width(self, model: nn.Module, plan: Plan) -> nn.Module:
        """AutoBot per-layer widths for the depth-pruned ``model``, at most as costly as
        uniform width ``plan.w`` (exact MACs at the plan's resolution)."""
        from .autobot import AutoBotConfig, learn_masks, prune_with_masks, select_channels

        ratio = (self.macs(plan.d, plan.w, plan.r) / self.macs(plan.d, 1.0, plan.r))
        model.dwrprune_spec = self.spec
        shr = Shrinker(model, min_resolution=self.min_resolution)
        bots, cost, target = learn_masks(model, self._autobot_loader, min(ratio, 0.999),
                                         AutoBotConfig(steps=self.autobot_steps), shr,
                                         progress=False)
        return prune_with_masks(model, shr, bots, select_channels(bots, cost, target))

    def _classifier_after(self, removed: list[Block]) -> str:
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
