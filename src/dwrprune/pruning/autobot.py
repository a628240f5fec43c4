"""AutoBot (Castells & Yeom 2021): learned channel selection with trainable bottlenecks.

The pretrained weights are frozen.  Every coupled channel group (Torch-Pruning's dependency
graph: residual adds and concats tie channels together) gets one trainable vector alpha;
its mask lambda = sigmoid(alpha), initialised at 0.9, multiplies the output of the group's
*terminal producers* -- the last normalisation (or conv) of each chain that feeds the group's
consumers (before the residual add for a residual branch).  We place the mask on that
layer's output rather than after its activation because activation modules are often shared
(``self.relu`` in ResNets); for ReLU and a mask in [0, 1] the two are the same, and for a
binary mask, as used for pruning, they are the same for every activation.

The loss is CE + beta * L_flops + gamma * L_bool (published form), where the MACs F are a
differentiable function of the soft channel counts c_G = sum(lambda_G): the same per-layer
arithmetic as :meth:`~dwrprune.pruning.shrink.Shrinker.macs`, so with binary masks it equals the
exact
MACs of the physically pruned model.  Adam trains the alphas only; the lowest-loss snapshot
after 60% of the steps is kept; channels with lambda above a threshold are kept, the
threshold found by bisection (start 0.5, step 0.25, halving) to hit the target MACs, at least
one channel per group.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from itertools import cycle

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..errors import DwrpruneError
from .analysis import Analysis, ChannelCost, ShrinkResult
from .surgery import PRUNABLE, build_graph, describe_groups, prune_groups, record_layer_changes


@dataclass
class AutoBotConfig:
    """Published CIFAR settings by default (beta 6, gamma 0.2, lr 0.6, 200 batches)."""

    beta: float = 6.0
    gamma: float = 0.2
    lr: float = 0.6
    steps: int = 200
    init: float = 0.9
    snapshot_after: float = 0.6
    seed: int = 0


def _channelwise(m: nn.Module) -> bool:
    """Layers that carry each channel through on its own (norms, depthwise convolutions):
    a producer feeding only these, within its group, needs no mask of its own."""
    if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
        return True
    return isinstance(m, nn.Conv2d) and m.groups == m.in_channels == m.out_channels > 1


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


class Bottlenecks:
    """Trainable masks on a model's channel groups, applied with forward hooks."""

    def __init__(self, model: nn.Module, shrinker: Analysis, init: float = 0.9):
        self.model = model
        x = shrinker.example_input(shrinker.trace_resolution)
        dg, groups = build_graph(model, x, [shrinker.classifier], shrinker.whole_groups)
        if not groups:
            raise DwrpruneError(f"{type(model).__name__} has no prunable layers for AutoBot")
        self.infos = describe_groups(model, dg, groups)
        names = {m: n for n, m in model.named_modules()}
        self.alphas: list[nn.Parameter] = []
        self.terminals: list[list[str]] = []
        self.member_group: dict[str, int] = {}
        for gi, (group, info) in enumerate(zip(groups, self.infos)):
            per = info.size // info.ch_groups
            self.alphas.append(nn.Parameter(torch.full((per,), _logit(init))))
            outs = {names[d.target.module] for d, _ in group if d.target.module in names
                    and dg.is_out_channel_pruning_fn(d.handler)
                    and any(True for _ in d.target.module.parameters(recurse=False))}
            for n in outs:
                self.member_group[n] = gi
            self.terminals.append(sorted(n for n in outs if self._terminal(dg, names, n, outs)))
        self._handles = []
        for gi, terms in enumerate(self.terminals):
            for n in terms:
                self._handles.append(
                    model.get_submodule(n).register_forward_hook(self._hook(gi)))

    @staticmethod
    def _terminal(dg, names, name: str, outs: set[str]) -> bool:
        """Whether some path from this producer's output (through ops only) reaches a
        consumer or the model output, rather than another producer of the same group: then
        the mask must sit here (e.g. a stem feeding both a depthwise conv of its group and a
        residual add).  A producer consumed only by its group's own producers is not."""
        start = dg.module2node[next(m for m, n in names.items() if n == name)]
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if not node.outputs:
                return True  # reaches the model output
            for nxt in node.outputs:
                mod_name = names.get(nxt.module)
                if mod_name is None:  # an op (add, relu, concat, reshape): look through it
                    todo.append(nxt)
                elif mod_name not in outs or not _channelwise(nxt.module):
                    return True  # a consumer: it mixes this group's channels into others
        return False

    def _hook(self, gi: int):
        def f(mod, args, out):
            m = self.mask(gi)
            shape = (1, -1) + (1,) * (out.dim() - 2)
            return out * m.view(shape)
        return f

    def mask(self, gi: int) -> Tensor:
        lam = torch.sigmoid(self.alphas[gi])
        return lam.repeat(self.infos[gi].ch_groups)

    def counts(self) -> list[Tensor]:
        return [self.mask(gi).sum() for gi in range(len(self.alphas))]

    def lambdas(self) -> list[Tensor]:
        return [self.mask(gi).detach().clone() for gi in range(len(self.alphas))]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def soft_cost(shrinker: Analysis, infos, resolution: int) -> ChannelCost:
    """MACs as a function of per-group channel counts (differentiable in soft counts)."""
    if shrinker.geometry(resolution)[1]:
        raise DwrpruneError("AutoBot's cost model covers conv and linear layers; this "
                            f"model has {shrinker.geometry(resolution)[1]} MACs in other ops")
    return ChannelCost(shrinker.geometry(resolution)[0], infos)


def learn_masks(model: nn.Module, loader: DataLoader, target_ratio: float,
                cfg: AutoBotConfig | None = None, shrinker: Analysis | None = None,
                progress: bool = True) -> tuple[Bottlenecks, ChannelCost, float]:
    """Train the bottlenecks of ``model`` (weights frozen) toward ``target_ratio`` of its
    MACs.  Returns the bottlenecks (hooks removed, best snapshot loaded), the cost model and
    the target MACs."""
    cfg = cfg or AutoBotConfig()
    if not 0.0 < target_ratio < 1.0:
        raise DwrpruneError(f"AutoBot budget must be in (0, 1), got {target_ratio}")
    shrinker = shrinker or Analysis(model)
    torch.manual_seed(cfg.seed)
    bots = Bottlenecks(model, shrinker, cfg.init)
    cost = soft_cost(shrinker, bots.infos, shrinker.base_resolution)
    f_max = float(cost([torch.tensor(float(s)) for s in cost.sizes]))
    target = target_ratio * f_max
    f_min = float(cost([torch.tensor(float(i.ch_groups)) for i in bots.infos]))
    if target < f_min:
        bots.remove()
        raise DwrpruneError(f"budget {target_ratio:g} is below what width pruning can reach "
                            f"(one channel per group still costs {f_min / f_max:.3f} of the "
                            "MACs)")
    saved = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    was_training = model.training
    model.eval()  # frozen weights: BatchNorm keeps its statistics
    opt = torch.optim.Adam(bots.alphas, lr=cfg.lr)
    best, best_loss = None, math.inf
    device = next(model.parameters()).device
    bar = tqdm(range(cfg.steps), desc="autobot", disable=not progress)
    try:
        batches = cycle(loader)
        for step in bar:
            x, y = next(batches)
            ce = F.cross_entropy(model(x.to(device)), y.to(device))
            f = cost(bots.counts())
            l_flops = (f - target) / (f_max - target) if f > target else 1 - f / target
            lams = [torch.sigmoid(a) for a in bots.alphas]
            l_bool = torch.stack([(lam - lam.round()).abs().sum() / lam.numel()
                                  for lam in lams]).mean()
            loss = ce + cfg.beta * l_flops + cfg.gamma * l_bool
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step >= cfg.snapshot_after * cfg.steps and loss.item() < best_loss:
                best_loss, best = loss.item(), [a.detach().clone() for a in bots.alphas]
            bar.set_postfix(loss=f"{loss.item():.3f}", macs=f"{float(f.detach()) / 1e6:.2f}M",
                            target=f"{target / 1e6:.2f}M")
    finally:
        bots.remove()
        for p, r in zip(model.parameters(), saved):
            p.requires_grad_(r)
        model.train(was_training)
    if best is not None:
        with torch.no_grad():
            for a, b in zip(bots.alphas, best):
                a.copy_(b)
    return bots, cost, target


def select_channels(bots: Bottlenecks, cost: ChannelCost, target: float,
                    iterations: int = 30) -> list[Tensor]:
    """Keep masks above a threshold found by bisection so that exact MACs hit the target
    (the largest MACs not above it); at least one channel per group."""
    lams = bots.lambdas()

    def keep_at(t: float) -> list[Tensor]:
        out = []
        for info, lam in zip(bots.infos, lams):
            per = info.size // info.ch_groups
            k = lam[:per] > t
            if not k.any():
                k[int(lam[:per].argmax())] = True
            out.append(k.repeat(info.ch_groups))
        return out

    def macs(keep) -> float:
        return float(cost([k.sum().float() for k in keep]))

    t, step, best = 0.5, 0.25, None
    for _ in range(iterations):
        keep = keep_at(t)
        m = macs(keep)
        if m <= target:
            if best is None or m > best[1]:
                best = (keep, m)
            t -= step
        else:
            t += step
        step /= 2
    if best is None:
        keep = keep_at(1.0)
        if macs(keep) > target:
            raise DwrpruneError("no threshold brings the model under the AutoBot target")
        best = (keep, macs(keep))
    return best[0]


def _group_index(group, dg, names: dict, member_group: dict[str, int]) -> int | None:
    """Which learned mask a group of (a copy of) the same model corresponds to: matched by
    the names of its *output-side* members (a consumer's input side belongs to the group
    too, but that layer's own outputs are another group's)."""
    for dep, _ in group:
        if dg.is_out_channel_pruning_fn(dep.handler):
            gi = member_group.get(names.get(dep.target.module))
            if gi is not None:
                return gi
    return None


def prune_with_masks(model: nn.Module, shrinker: Analysis, bots: Bottlenecks,
                     keep: list[Tensor]) -> nn.Module:
    """Physically remove the channels ``keep`` marks False, group by group."""
    pruned = copy.deepcopy(model)
    names = {m: n for n, m in pruned.named_modules()}

    def choose(group, dg, n, cg):
        gi = _group_index(group, dg, names, bots.member_group)
        return torch.nonzero(~keep[gi]).flatten().tolist() if gi is not None else []

    prune_groups(pruned, shrinker.example_input(shrinker.trace_resolution),
                 [shrinker.classifier], choose, shrinker.whole_groups)
    return pruned


class AutoBotWidth:
    """Width allocation strategy for :class:`dwrprune.pruning.shrink.Shrinker`: AutoBot's learned
    per-layer widths for the depth-pruned model, at most as costly as uniform width ``w``
    (exact MACs at the plan's resolution)."""

    name = "autobot"
    needs = frozenset({"train"})
    exact_cost = False  # at most the uniform model's MACs; the result is counted

    def __init__(self, loader: DataLoader, steps: int = 200):
        self.loader, self.steps = loader, steps

    @classmethod
    def from_context(cls, train_loader, autobot_steps: int = 200, **_) -> AutoBotWidth:
        return cls(train_loader, autobot_steps)

    def apply(self, model: nn.Module, shrinker, plan) -> nn.Module:
        ratio = shrinker.macs(plan.d, plan.w, plan.r) / shrinker.macs(plan.d, 1.0, plan.r)
        model.dwrprune_spec = shrinker.spec
        ana = Analysis(model, min_resolution=shrinker.min_resolution)
        bots, cost, target = learn_masks(model, self.loader, min(ratio, 0.999),
                                         AutoBotConfig(steps=self.steps), ana, progress=False)
        return prune_with_masks(model, ana, bots, select_channels(bots, cost, target))


class AutoBotCriterion:
    """Channel criterion for ``shrink``: rank channels by learned mask values.  Masks are
    learned on the model about to be pruned, toward the MACs of uniform width ``w``."""

    name = "autobot"
    needs = frozenset({"train"})

    def __init__(self, loader: DataLoader | None = None, cfg: AutoBotConfig | None = None,
                 progress: bool = False):
        if loader is None:
            raise DwrpruneError("the autobot channel criterion needs training data "
                                "(pass a loader, or --data on the CLI)")
        self.loader, self.cfg, self.progress = loader, cfg or AutoBotConfig(), progress
        self.lams: list[Tensor] = []
        self.member_group: dict[str, int] = {}

    @classmethod
    def from_context(cls, train_loader=None, **_) -> AutoBotCriterion:
        return cls(train_loader)

    def prepare(self, model: nn.Module, w: float = 1.0) -> None:
        shr = Analysis(model)
        bots, _, _ = learn_masks(model, self.loader, min(max(w * w, 0.01), 0.99), self.cfg,
                                 shr, self.progress)
        self.lams, self.member_group = bots.lambdas(), dict(bots.member_group)

    def group_scores(self, group, dg) -> Tensor:
        names = {m: n for n, m in dg.model.named_modules()}
        gi = _group_index(group, dg, names, self.member_group)
        if gi is None:
            raise DwrpruneError("autobot criterion has no learned mask for a channel group")
        return self.lams[gi]


def autobot_prune(model: nn.Module, loader: DataLoader, budget: float,
                  cfg: AutoBotConfig | None = None, progress: bool = True,
                  recal_loader: DataLoader | None = None,
                  recal_batches: int = 20, ignored_layers=None) -> ShrinkResult:
    """AutoBot as a method: per-layer width allocation to ``budget`` of the MACs.  With
    ``recal_loader``, BatchNorm statistics are re-estimated on the pruned model (EagleEye),
    as every other shrink in dwrprune does before a model is evaluated.  ``ignored_layers``:
    modules (or names) whose channels stay whole."""
    from ..cost import count_macs, count_params
    from ..training.engine import recalibrate_batchnorm

    shr = Analysis(model, ignored_layers=ignored_layers)
    bots, cost, target = learn_masks(model, loader, budget, cfg, shr, progress)
    keep = select_channels(bots, cost, target)
    pruned = prune_with_masks(model, shr, bots, keep)
    spec = copy.deepcopy(shr.spec)
    reference = copy.deepcopy(model)
    spec["arch"] = {"method": "autobot", "budget": budget, "removed_blocks": [],
                    "point": {"d": 1.0, "w": None, "r": 1.0},
                    "base_resolution": shr.base_resolution,
                    "layers": record_layer_changes(reference, pruned),
                    "kept_per_group": [int(k.sum()) for k in keep]}
    if recal_loader is not None and recal_batches > 0:
        recalibrate_batchnorm(pruned, recal_loader, recal_batches)
    pruned.eval()
    pruned.dwrprune_spec = spec
    res = spec["input"]["resolution"]
    return ShrinkResult(pruned, spec, count_macs(pruned, res), count_params(pruned))


__all__ = ["AutoBotConfig", "AutoBotCriterion", "Bottlenecks", "autobot_prune",
           "learn_masks", "select_channels", "soft_cost", "PRUNABLE"]
