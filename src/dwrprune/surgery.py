"""Physical width pruning through Torch-Pruning's dependency graph, and the JSON record of
what changed so that a pruned model can be rebuilt from its constructor.

Torch-Pruning finds the coupled channel groups (residual adds, concats, depthwise and grouped
convolutions) and performs the index surgery.  How many channels each group keeps is decided
here, by :func:`dwrprune.costmath.kept_channels`, so that the exact cost query in
:mod:`dwrprune.shrink` can compute the pruned MACs without pruning anything.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from .blocks import Block, get_module, remove_blocks
from .costmath import kept_channels
from .errors import DwrpruneError

# Module attributes that channel pruning changes; recorded in the spec, re-applied on load.
LAYER_ATTRS = ("in_channels", "out_channels", "groups", "num_features", "in_features",
               "out_features", "normalized_shape", "num_channels", "num_groups",
               "num_parameters")
PRUNABLE = (nn.Conv2d, nn.Linear)


@dataclass
class GroupInfo:
    """One coupled channel group: its size and which layer sides it prunes (with factor)."""

    root: str
    out_fn: bool
    size: int
    ch_groups: int
    members: list[tuple[str, str, int]] = field(default_factory=list)  # (layer, in|out, k)


def output_layer(model: nn.Module, example_input: torch.Tensor) -> str:
    """Name of the last conv/linear layer to run: the classifier, never width-pruned."""
    last: list[str] = []
    hooks = [m.register_forward_hook(lambda mod, a, o, n=n: last.append(n))
             for n, m in model.named_modules() if isinstance(m, PRUNABLE)]
    try:
        with torch.no_grad():
            model.eval()(example_input)
    finally:
        for h in hooks:
            h.remove()
    if not last:
        raise DwrpruneError(f"{type(model).__name__} has no Conv2d or Linear layer to prune")
    return last[-1]


def _channel_groups(group) -> int:
    cg = 1
    for dep, _ in group:
        m = dep.target.module
        if isinstance(m, nn.Conv2d) and 1 < m.groups and not (m.groups == m.in_channels
                                                             == m.out_channels):
            cg = max(cg, m.groups)
        elif isinstance(m, nn.GroupNorm):
            cg = max(cg, m.num_groups)
    return cg


def build_graph(model: nn.Module, example_input: torch.Tensor, ignored: list[str]):
    """Torch-Pruning dependency graph and its prunable groups (classifier outputs ignored)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
            groups = list(dg.get_all_groups(
                ignored_layers=[get_module(model, n) for n in ignored],
                root_module_types=list(PRUNABLE)))
    except Exception as e:  # noqa: BLE001 - Torch-Pruning raises many kinds; name the model
        raise DwrpruneError(
            f"Torch-Pruning cannot trace {type(model).__name__} for channel pruning: "
            f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}") from None
    return dg, groups


def describe_groups(model: nn.Module, dg, groups) -> list[GroupInfo]:
    """Sizes and members of each group, as plain data for the cost arithmetic."""
    names = {m: n for n, m in model.named_modules()}
    infos = []
    for group in groups:
        root_dep, root_idxs = group[0]
        n = len(root_idxs)
        seen = set()
        info = GroupInfo(names.get(root_dep.target.module, "?"),
                         dg.is_out_channel_pruning_fn(root_dep.handler), n,
                         _channel_groups(group))
        for dep, idxs in group:
            mod = dep.target.module
            if mod not in names:
                continue
            side = "out" if dg.is_out_channel_pruning_fn(dep.handler) else "in"
            if not isinstance(mod, PRUNABLE):
                side = "out"  # BatchNorm & co. have one channel dimension
            key = (names[mod], side)
            if key in seen:
                continue
            seen.add(key)
            info.members.append((names[mod], side, max(1, len(idxs) // max(n, 1))))
        infos.append(info)
    return infos


def prune_groups(model: nn.Module, example_input: torch.Tensor, ignored: list[str],
                 choose) -> None:
    """Prune every coupled group; ``choose(group, dg, n, ch_groups)`` returns the channel
    indices to remove (an empty list keeps the group whole)."""
    dg, groups = build_graph(model, example_input, ignored)
    if not groups:
        raise DwrpruneError(f"{type(model).__name__} has no prunable channel groups")
    plans = []
    for group in groups:
        root_dep, root_idxs = group[0]
        idxs = choose(group, dg, len(root_idxs), _channel_groups(group))
        if idxs:
            plans.append((root_dep.target.module, root_dep.handler, sorted(int(i) for i in idxs)))
    for module, handler, idxs in plans:
        dg.get_pruning_group(module, handler, idxs).prune()


def prune_width(model: nn.Module, example_input: torch.Tensor, w: float, criterion,
                ignored: list[str], round_to: int | None = None) -> None:
    """Keep ``kept_channels(n, w)`` channels of every coupled group, chosen by ``criterion``."""
    if w >= 1.0:
        return
    prepare = getattr(criterion, "prepare", None)
    if prepare is not None:  # e.g. Taylor: gradients on the model about to be pruned
        prepare(model, w=w)

    def choose(group, dg, n, cg):
        n_pruned = n - kept_channels(n, w, cg, round_to)
        if n_pruned <= 0:
            return []
        imp = criterion.group_scores(group, dg)
        if imp is None or len(imp) != n:
            raise DwrpruneError(f"criterion {criterion.name!r} gave no score for the group of "
                                f"{type(group[0][0].target.module).__name__}")
        imp = imp.detach().float().cpu()
        if cg > 1:  # the same positions in every group of a grouped convolution
            per = n // cg
            pos = torch.argsort(imp.view(cg, per).mean(0))[: n_pruned // cg]
            return [g * per + int(j) for g in range(cg) for j in pos]
        return [int(i) for i in torch.argsort(imp)[:n_pruned]]

    prune_groups(model, example_input, ignored, choose)
    model.zero_grad(set_to_none=True)


# ---------------------------------------------------------------------------- arch records
def _own_tensors(m: nn.Module) -> dict[str, torch.Tensor]:
    out = {k: v for k, v in m.named_parameters(recurse=False)}
    out.update({k: v for k, v in m.named_buffers(recurse=False) if v is not None})
    return out


def _attrs(m: nn.Module) -> dict:
    vals = {}
    for a in LAYER_ATTRS:
        if hasattr(m, a):
            v = getattr(m, a)
            if isinstance(v, (int, tuple, list)):
                vals[a] = list(v) if isinstance(v, (tuple, list)) else v
    return vals


def layer_snapshot(model: nn.Module) -> dict[str, tuple]:
    """Per module: its type, channel attributes and tensor shapes (cheap; no weights)."""
    return {name: (type(m), _attrs(m), {k: tuple(v.shape) for k, v in _own_tensors(m).items()})
            for name, m in model.named_modules()}


def record_layer_changes(before: nn.Module | dict, after: nn.Module) -> dict[str, dict]:
    """Per module: the attributes and tensor shapes that differ between two models (or a
    :func:`layer_snapshot` of the first)."""
    ref = before if isinstance(before, dict) else layer_snapshot(before)
    changes: dict[str, dict] = {}
    for name, (typ, a_new, t_new) in layer_snapshot(after).items():
        old = ref.get(name)
        if old is None or old[0] is not typ:
            continue
        _, a_old, t_old = old
        attrs = {k: v for k, v in a_new.items() if a_old.get(k) != v}
        shapes = {k: list(v) for k, v in t_new.items() if k in t_old and t_old[k] != v}
        if attrs or shapes:
            changes[name] = {"attrs": attrs, "shapes": shapes}
    return changes


def apply_layer_changes(model: nn.Module, changes: dict[str, dict]) -> None:
    """Resize modules in place to recorded attributes and shapes (values come from load)."""
    for name, ch in changes.items():
        try:
            m = get_module(model, name)
        except AttributeError:
            raise DwrpruneError(
                f"spec names layer {name!r}, which the model does not have") from None
        for a, v in ch.get("attrs", {}).items():
            setattr(m, a, tuple(v) if a == "normalized_shape" else v)
        for t, shape in ch.get("shapes", {}).items():
            old = getattr(m, t)
            new = torch.zeros(shape, dtype=old.dtype, device=old.device)
            if isinstance(old, nn.Parameter):
                setattr(m, t, nn.Parameter(new, requires_grad=old.requires_grad))
            else:
                m.register_buffer(t, new)


def apply_arch(model: nn.Module, arch: dict) -> None:
    """Turn a freshly built model into the pruned architecture a spec describes."""
    remove_blocks(model, [Block.from_dict(b) for b in arch.get("removed_blocks", [])])
    apply_layer_changes(model, arch.get("layers", {}))
