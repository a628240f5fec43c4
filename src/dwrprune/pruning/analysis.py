"""What a model is made of, independent of how it will be pruned.

:class:`Analysis` traces a model once and caches what every cost query and every surgery
needs: its removable blocks (:mod:`dwrprune.pruning.blocks`), its coupled channel groups
(Torch-Pruning's dependency graph), its classifier, and per-layer geometry at each input
resolution.  :class:`ChannelCost` turns that geometry into MACs as a function of how many
channels each group keeps.  :class:`~dwrprune.pruning.shrink.Shrinker` adds criteria and
surgery on top;
AutoBot uses the analysis alone.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..cost import first_conv_in_channels
from ..cost.rounding import ALIGN
from ..errors import DwrpruneError
from ..io.spec import make_spec
from .blocks import resolve_blocks
from .surgery import (
    PRUNABLE,
    GroupInfo,
    build_graph,
    describe_groups,
    group_roots,
    output_layer,
    unprunable_groups,
)


def model_spec(model: nn.Module, resolution: int | None, in_channels: int | None) -> dict:
    """A copy of the model's spec dict, or a minimal one for a model without a spec."""
    spec = getattr(model, "dwrprune_spec", None)
    if spec is not None:
        return copy.deepcopy(spec)
    if resolution is None:
        raise DwrpruneError(f"{type(model).__name__} has no dwrprune spec: pass "
                            "resolution=<input side> (or example_inputs=)")
    return make_spec(None, 0, in_channels or first_conv_in_channels(model), resolution)


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

    def _layers(self, counts, dropped):
        """Per kept layer: its geometry, kept input channels, output channels, and input
        channels per output (after grouping)."""
        # float64 for tensors: a ResNet-50 costs ~1e9 MACs, beyond float32's exact integers
        counts = [c.double() if isinstance(c, torch.Tensor) else c for c in counts]
        for g, ins, outs in self.layers:
            if g.name in dropped:
                continue
            cin = g.in_ch - sum(f * (self.sizes[gi] - counts[gi]) for gi, f in ins)
            cout = g.out_ch - sum(f * (self.sizes[gi] - counts[gi]) for gi, f in outs)
            if g.groups > 1 and g.groups == g.in_ch == g.out_ch:  # depthwise: in = out = groups
                cin = cout = min(cin, cout)  # as the shrunk model has it
                per_group = 1
            else:  # every output needs (in / groups) * k_h * k_w products
                per_group = cin // g.groups if isinstance(cin, int) else cin / g.groups
            yield g, cin, cout, per_group

    def kept(self, counts=(), dropped: frozenset[str] | set[str] = frozenset()
             ) -> list[tuple[LayerGeom, int, int]]:
        """Each kept layer's geometry with its kept input and output channels."""
        return [(g, cin, cout) for g, cin, cout, _ in self._layers(counts, dropped)]

    def __call__(self, counts=(), dropped: frozenset[str] | set[str] = frozenset()):
        total = 0
        for g, _, cout, per_group in self._layers(counts, dropped):
            total = total + g.positions * g.kernel * per_group * cout
        return total

    def structure(self, counts=(), dropped: frozenset[str] | set[str] = frozenset()) -> dict:
        """What else a forward pass costs beyond MACs: output elements written (memory
        traffic), weights read, and layers run (per-call overheads)."""
        out = {"activations": 0, "weights": 0, "layers": 0, "aligned_macs": 0,
               "unaligned_macs": 0}
        for g, cin, cout, per_group in self._layers(counts, dropped):
            out["activations"] += g.positions * cout
            out["weights"] += g.kernel * per_group * cout
            out["layers"] += 1
            # kernels that compute channels in blocks of 8 (ONNX Runtime's NCHWc layout, GPU
            # tensor cores) take a faster path when every channel count is a multiple of 8
            aligned = cin % ALIGN == 0 and cout % ALIGN == 0
            out["aligned_macs" if aligned else "unaligned_macs"] += \
                g.positions * g.kernel * per_group * cout
        return out


@dataclass
class ShrinkResult:
    model: nn.Module
    spec: dict
    macs: int
    params: int


def check_model_usable(model) -> None:
    """A model the pipeline can work on: an ``nn.Module`` with parameters, all finite and on
    a real device (not ``meta``), or one clear error."""
    if not isinstance(model, nn.Module):
        raise DwrpruneError(f"the model must be a torch nn.Module, got {type(model).__name__}")
    params = list(model.parameters())
    if not params:
        raise DwrpruneError(f"{type(model).__name__} has no parameters: nothing to prune")
    if any(p.device.type == "meta" for p in params):
        raise DwrpruneError(f"{type(model).__name__} is on the meta device (no weights); "
                            "load its trained weights first")
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise DwrpruneError(f"{type(model).__name__} has non-finite weights (NaN or inf) in "
                            f"{', '.join(bad[:3])}; prune a trained model whose weights are "
                            "finite")


def ignored_names(model: nn.Module, layers) -> tuple[str, ...]:
    """Module names of ``layers`` (names, or the modules themselves), each checked to be a
    module of ``model``."""
    if layers is None:
        return ()
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    names = {m: n for n, m in model.named_modules()}
    known = set(names.values())
    out = []
    for x in layers:
        n = names.get(x) if isinstance(x, nn.Module) else x
        if not isinstance(n, str) or n not in known or n == "":
            what = type(x).__name__ if isinstance(x, nn.Module) else repr(x)
            raise DwrpruneError(
                f"ignored layer {what} is not a module of {type(model).__name__}; give module "
                f"names as model.named_modules() lists them, e.g. "
                f"{', '.join(list(known - {''})[:6])}")
        out.append(n)
    return tuple(dict.fromkeys(out))


class Analysis:
    """Trace ``model`` once: removable blocks, channel groups, classifier, layer geometry.

    ``blocks``: removable block names (default: detected from the traced graph).
    ``transitions``: also count stage-transition blocks (replaced by their projection
    shortcut when removed).  ``min_resolution``: the smallest input side allowed (default:
    the registry's minimum for registered models, else 8).  ``ignored_layers``: module
    names (or modules) left exactly as they are, with everything inside them: no channel
    group touching them is pruned, and no block holding one is removed.
    """

    def __init__(self, model: nn.Module, *, resolution: int | None = None,
                 in_channels: int | None = None, blocks: list[str] | None = None,
                 transitions: bool = False, min_resolution: int | None = None,
                 ignored_layers=None):
        check_model_usable(model)
        self.ignored = ignored_names(model, ignored_layers)
        was_training = model.training
        try:
            self._analyse(model, resolution, in_channels, blocks, transitions, min_resolution)
        finally:
            model.train(was_training)  # the user's model is left in the mode it was given

    def _analyse(self, model, resolution, in_channels, blocks, transitions, min_resolution):
        self.model = model
        self.spec = model_spec(model, resolution, in_channels)
        self.base_resolution = resolution or self.spec["input"]["resolution"]
        self.in_channels = self.spec["model"]["in_channels"]
        name = self.spec["model"]["name"]
        self._meta: nn.Module | None = None
        if min_resolution is None:
            from ..models import get_entry

            min_resolution = (get_entry(name).min_resolution if name else
                              8 if self._runs_at(max(8, self.base_resolution * 3 // 4)) else
                              self.base_resolution)  # a fixed input size (e.g. ViT)
            if min_resolution < self.base_resolution and not self._runs_at(min_resolution):
                min_resolution = self.base_resolution  # e.g. MaxViT's fixed partitions
        self.min_resolution = min_resolution
        # Structure (blocks, channel groups) does not depend on the input size for registry
        # models, which all end in adaptive pooling: trace them at a small input, which makes
        # analysis and surgery of large-input models several times cheaper.  (Tracing at a
        # size where a stage shrinks to 1x1 is fine: only channel structure is read.)
        self.trace_resolution = (self.base_resolution if not name else
                                 max(self.min_resolution, min(self.base_resolution, 32)))
        x = self.example_input(self.trace_resolution)
        self.blocks = resolve_blocks(model, x, blocks, transitions)
        held = [b.name for b in self.blocks if self._touches_ignored(b.name)]
        if held and blocks is not None:
            raise DwrpruneError(f"blocks {held} hold ignored layers {list(self.ignored)}: "
                                "an ignored layer's block is never removed")
        self.blocks = [b for b in self.blocks if b.name not in held]
        self.classifier = output_layer(model, x)
        self._groups: list[GroupInfo] | None = None
        self._whole: frozenset[str] = frozenset()
        self._geom: dict[int, tuple[list[LayerGeom], int]] = {}
        self._inputs: dict[int, dict[str, tuple[int, ...]]] = {}
        self._costs: dict[tuple[int, bool], ChannelCost] = {}

    def _is_ignored(self, layer: str) -> bool:
        return any(layer == n or layer.startswith(n + ".") for n in self.ignored)

    def _touches_ignored(self, block: str) -> bool:
        return any(block == n or block.startswith(n + ".") or n.startswith(block + ".")
                   for n in self.ignored)

    def example_input(self, resolution: int | None = None) -> torch.Tensor:
        res = resolution or self.base_resolution
        device = next(self.model.parameters()).device
        return torch.zeros(1, self.in_channels, res, res, device=device)

    def groups(self) -> list[GroupInfo]:
        if self._groups is None:
            x = self.example_input(self.trace_resolution)
            probe = copy.deepcopy(self.model)
            dg, groups = build_graph(probe, x, [self.classifier])
            roots = group_roots(probe, groups)
            broken = unprunable_groups(self.model, x, [self.classifier], roots)
            infos = describe_groups(probe, dg, groups)
            broken = set(broken) | {root for info, root in zip(infos, roots) if any(
                self._is_ignored(n) for n, _, _ in info.members)}
            # every layer whose output channels a broken group holds, so the group is still
            # left whole when a removed block took its root
            self._whole = frozenset(n for info, root in zip(infos, roots) if root in broken
                                    for n, side, _ in info.members if side == "out")
            self._groups = [i for i, root in zip(infos, roots) if root not in broken]
        return self._groups

    @property
    def whole_groups(self) -> frozenset[str]:
        """The layers whose output channels belong to a group width pruning leaves whole
        (:func:`~dwrprune.pruning.surgery.unprunable_groups`)."""
        self.groups()
        return self._whole

    def axes(self) -> dict:
        """Which axes this model offers, and why one is missing: removable blocks (depth),
        traceable coupled channel groups (width), the input sides allowed (resolution)."""
        try:
            groups, why = len(self.groups()), ""
        except DwrpruneError as e:
            groups, why = 0, str(e)
        return {"depth": {"blocks": len(self.blocks),
                          "kinds": sorted({b.kind for b in self.blocks}),
                          "why": "" if self.blocks else
                          "no residual block (x + f(x)) found by the tracer: d stays 1"},
                "width": {"groups": groups, "why": why or ("" if groups else
                                                            "no prunable channel group")},
                "resolution": {"base": self.base_resolution, "min": self.min_resolution}}

    def _runs_at(self, resolution: int) -> bool:
        """Whether the model accepts a ``resolution`` input (shapes only, on the meta
        device: no arithmetic)."""
        try:
            with torch.no_grad():
                self._meta_model()(torch.zeros(1, self.in_channels, resolution, resolution,
                                               device="meta"))
            return True
        except Exception:  # any failure means: not at this size
            return False

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
            inputs: dict[str, tuple[int, ...]] = {}

            def hook(name):
                def f(mod, args, out):
                    inputs[name] = tuple(args[0].shape[1:])
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
            self._inputs[resolution] = inputs
        return self._geom[resolution]

    def layer_input(self, resolution: int, name: str) -> tuple[int, ...]:
        """The input shape (without the batch) of conv/linear layer ``name`` of the unpruned
        model at ``resolution``."""
        self.geometry(resolution)
        return self._inputs[resolution][name]

    def channel_cost(self, resolution: int, width_pruned: bool = True) -> ChannelCost:
        """The MACs formula at ``resolution`` (over the channel groups if widths change)."""
        key = (resolution, width_pruned)
        if key not in self._costs:
            self._costs[key] = ChannelCost(self.geometry(resolution)[0],
                                           self.groups() if width_pruned else [])
        return self._costs[key]
