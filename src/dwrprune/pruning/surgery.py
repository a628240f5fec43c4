"""Physical width pruning through Torch-Pruning's dependency graph, and the JSON record of
what changed so that a pruned model can be rebuilt from its constructor.

Torch-Pruning finds the coupled channel groups (residual adds, concats, depthwise and grouped
convolutions) and performs the index surgery.  How many channels each group keeps is decided
here, by :func:`dwrprune.cost.rounding.kept_channels`, so that the exact cost query in
:mod:`dwrprune.pruning.shrink` can compute the pruned MACs without pruning anything.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from ..cost.rounding import kept_channels
from ..errors import DwrpruneError
from .blocks import BLOCK_KINDS, Block, activation, get_module, remove_blocks

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


def build_graph(model: nn.Module, example_input: torch.Tensor, ignored: list[str],
                whole: frozenset[str] = frozenset()):
    """Torch-Pruning dependency graph and its prunable groups (classifier outputs ignored;
    groups rooted at a layer named in ``whole`` left out: see :func:`unprunable_groups`)."""
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
    if whole:  # by out-channel membership: removing blocks may give a group another root
        names = {m: n for n, m in model.named_modules()}
        groups = [g for g in groups if not any(
            dg.is_out_channel_pruning_fn(dep.handler) and names.get(dep.target.module) in whole
            for dep, _ in g)]
    return dg, groups


def group_roots(model: nn.Module, groups) -> list[str | None]:
    """The module path of each group's root layer."""
    names = {m: n for n, m in model.named_modules()}
    return [names.get(g[0][0].target.module) for g in groups]


def drop_blocks(model: nn.Module, blocks: list[Block], example_input: torch.Tensor) -> None:
    """Remove ``blocks`` from a live model (in place):
    :func:`~dwrprune.pruning.blocks.remove_blocks`,
    and for a dense layer first the input channels its output fed, cut from every layer that
    read them through a concatenation (Torch-Pruning's dependency graph maps the
    concatenation offsets; the dense layer's own layers go with it)."""
    dense = [b for b in blocks if b.kind == "dense"]
    if dense:  # one dependency graph for all: its concatenation records are kept up to date
        names = {m: n for n, m in model.named_modules()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
        for b in dense:
            conv = get_module(model, b.members[0])
            group = dg.get_pruning_group(conv, tp.prune_conv_out_channels,
                                         idxs=list(range(conv.out_channels)))
            for dep, idxs in group:
                n = names.get(dep.target.module)  # None: Torch-Pruning's own concat/split ops
                if n is None or (n != b.name and not n.startswith(b.name + ".")):
                    dep(idxs)
    remove_blocks(model, blocks)


def unprunable_groups(model: nn.Module, example_input: torch.Tensor, ignored: list[str],
                      roots: list[str]) -> frozenset[str]:
    """Of the groups rooted at ``roots``, those whose pruning leaves a model that no longer
    runs: the model's own code sizes some tensors itself (a ViT's ``hidden_dim`` in a reshape
    of its class token, an attention's head count in a reshape of q, k and v).  All groups
    are tried at once, half their channels pruned, on a copy; only if that fails is each
    tried alone.  Width pruning leaves these groups whole, with a warning naming them."""

    def runs(chosen: set[str]) -> bool:
        trial = copy.deepcopy(model)
        try:
            prune_groups(trial, example_input, ignored,
                         lambda group, dg, n, cg: list(range(n // 2)) if cg == 1 and n > 1
                         else [], whole=frozenset(roots) - chosen)
            with torch.no_grad():
                trial.eval()(example_input)
            return True
        except Exception:  # noqa: BLE001 - any failure: the groups are left whole
            return False

    if runs(set(roots)):
        return frozenset()
    broken = frozenset(r for r in roots if not runs({r}))
    if broken:
        warnings.warn(f"width pruning leaves {len(broken)} channel group(s) of "
                      f"{type(model).__name__} whole (pruned, the model no longer runs: its "
                      f"code sizes them itself, e.g. a class token or attention heads): "
                      f"rooted at {', '.join(sorted(broken)[:6])}", stacklevel=2)
    return broken


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
                 choose, whole: frozenset[str] = frozenset()) -> None:
    """Prune every coupled group; ``choose(group, dg, n, ch_groups)`` returns the channel
    indices to remove (an empty list keeps the group whole)."""
    dg, groups = build_graph(model, example_input, ignored, whole)
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
                ignored: list[str], round_to: int | None = None,
                whole: frozenset[str] = frozenset()) -> None:
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

    prune_groups(model, example_input, ignored, choose, whole)
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


def _module(model: nn.Module, name, what: str) -> nn.Module:
    if not isinstance(name, str) or not name:
        raise DwrpruneError(f"spec {what} must be a layer name, got "
                            f"{repr(name)[:40] if isinstance(name, str) else type(name).__name__}"
                            " (the empty name is the whole model, never one of its layers)")
    try:
        return get_module(model, name)
    except AttributeError:
        raise DwrpruneError(f"spec {what} names layer {name!r}, which the model does not "
                            "have") from None


def _blocks_from_spec(model: nn.Module, records) -> list[Block]:
    """The removed blocks a spec records, checked against the freshly built model."""
    if not isinstance(records, list):
        raise DwrpruneError("spec arch.removed_blocks must be a list")
    blocks = []
    for rec in records:
        if not isinstance(rec, dict) or set(rec) - {"name", "kind", "members", "shortcut",
                                                    "post"} or "name" not in rec:
            raise DwrpruneError(f"spec arch.removed_blocks entry {str(rec)[:80]!r} is not a "
                                "block record (name, kind, members, shortcut, post)")
        if rec.get("kind") not in BLOCK_KINDS:
            raise DwrpruneError(f"spec block {rec['name']!r} has kind {rec.get('kind')!r}; "
                                f"known: {', '.join(BLOCK_KINDS)}")
        members, post = rec.get("members", []), rec.get("post", [])
        if not isinstance(members, list) or not isinstance(post, list) or not all(
                isinstance(p, str) for p in post):
            raise DwrpruneError(f"spec block {rec['name']!r}: members and post must be lists "
                                "of names")
        for p in post:
            activation(p)  # a known activation, or a one-line error naming it
        _module(model, rec["name"], "arch.removed_blocks")
        for m in members:
            _module(model, m, f"block {rec['name']!r} member")
        if rec.get("shortcut") is not None:
            _module(model, rec["shortcut"], f"block {rec['name']!r} shortcut")
        blocks.append(Block.from_dict(rec))
    return blocks


def _checked_size(v, limit: int, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= limit:
        raise DwrpruneError(f"spec {where} = {v!r} must be a whole number in [1, {limit}] "
                            "(a pruned layer is never larger than the original)")
    return v


def _checked_sizes(value, orig, where: str) -> None:
    """``value`` has the form of ``orig`` (a size or a list of sizes), each within it."""
    if not isinstance(orig, list):
        _checked_size(value, orig, where)
        return
    if not isinstance(value, list) or len(value) != len(orig):
        raise DwrpruneError(f"spec {where} must be a list of {len(orig)} sizes, got "
                            f"{str(value)[:60]}")
    for x, o in zip(value, orig):
        _checked_size(x, o, where)


def validate_layer_changes(model: nn.Module, changes) -> None:
    """Only existing layers, only the attributes a pruned layer may change, only sizes
    within the original's: a spec can never make dwrprune build an unexpected module or
    allocate more than the original model holds."""
    if not isinstance(changes, dict):
        raise DwrpruneError("spec arch.layers must be a mapping of layer name to changes")
    for name, ch in changes.items():
        m = _module(model, name, "arch.layers")
        if not isinstance(ch, dict) or set(ch) - {"attrs", "shapes"}:
            raise DwrpruneError(f"spec arch.layers[{name!r}] must hold only 'attrs' and "
                                "'shapes' mappings")
        attrs, shapes = ch.get("attrs", {}), ch.get("shapes", {})
        if not isinstance(attrs, dict) or not isinstance(shapes, dict):
            raise DwrpruneError(f"spec arch.layers[{name!r}]: attrs and shapes must be "
                                "mappings")
        own = _attrs(m)
        for a, v in attrs.items():
            if a not in own:
                raise DwrpruneError(f"spec arch.layers[{name!r}] changes {a!r}, which is not "
                                    f"a channel attribute of {type(m).__name__} "
                                    f"(allowed: {sorted(own)})")
            _checked_sizes(v, own[a], f"{name}.{a}")
        tensors = _own_tensors(m)
        for t, shape in shapes.items():
            if t not in tensors:
                raise DwrpruneError(f"spec arch.layers[{name!r}] resizes {t!r}, which "
                                    f"{type(m).__name__} does not hold "
                                    f"(tensors: {sorted(tensors)})")
            _checked_sizes(shape, list(tensors[t].shape), f"shape of {name}.{t}")


def apply_layer_changes(model: nn.Module, changes: dict[str, dict]) -> None:
    """Resize modules in place to recorded attributes and shapes (validated first)."""
    validate_layer_changes(model, changes)
    for name, ch in changes.items():
        m = get_module(model, name)
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
    """Turn a freshly built model into the pruned architecture a spec describes; every
    record is checked against the model before anything changes."""
    remove_blocks(model, _blocks_from_spec(model, arch.get("removed_blocks", [])))
    apply_layer_changes(model, arch.get("layers", {}))
