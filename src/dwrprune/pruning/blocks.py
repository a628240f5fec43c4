"""Removable blocks, found from the traced autograd graph rather than from class names.

A *residual* block is any sub-module whose output is ``input + branch(input)``, possibly
followed by an activation (ReLU, ReLU6, SiLU, LeakyReLU; removing the block keeps a
non-ReLU one: ``act(input)``), or a chain of such additions on one stream (a transformer-style
block: ``x = x + attn(norm(x)); x = x + mlp(norm(x))``).  We find them by running one
forward pass with hooks that note each module's input and output autograd nodes, then
checking whether the output node is an addition (behind at most a ReLU-like op) with the
input node as one operand, directly or through further additions.  This catches
our CIFAR ResNets, torchvision's BasicBlock / Bottleneck / InvertedResidual / MBConv / RegNet
blocks, and any user module of that shape.

A *transition* block has the same form with a projection module on the shortcut
(``proj(input) + branch(input)``); removing it leaves ``act(proj(input))``.  A *plain* unit is
a conv-BN-activation run inside an ``nn.Sequential`` whose output has its input's shape
(VGG); removing it deletes the three layers.

A *dense* layer (DenseNet) is a module whose output is only ever concatenated onto the
features it read: every consumer of its output is a concatenation that also holds (some of)
the layer's input, with the layer's output never first.  Removing it removes its channels
from every concatenation; the layers that read them lose those input channels
(:func:`dwrprune.pruning.surgery.drop_blocks`), and the layer itself becomes :class:`EmptyFeatures`,
which adds no channels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..errors import DwrpruneError
from ..registry import Registry

_ACTIVATIONS = {"ReluBackward0": "relu", "Relu6Backward0": "relu6",
                "HardtanhBackward0": "relu6", "LeakyReluBackward0": "leaky_relu",
                "SiluBackward0": "silu"}
# ReLU after the add is left out when a block goes: its input is a ReLU's output already.
# Others are kept: removing act(x + f(x)) leaves act(x) (the block with f = 0).
_IDEMPOTENT = ("relu", "relu6")


def activation(name: str) -> nn.Module:
    """The module for an activation record: relu, relu6, silu or leaky_relu:SLOPE."""
    kind, _, arg = name.partition(":")
    if kind == "leaky_relu":
        try:
            slope = float(arg)
        except ValueError:
            slope = float("nan")
        if not 0 <= slope < 1:
            raise DwrpruneError(f"activation {name!r}: leaky_relu needs a slope in [0, 1)")
        return nn.LeakyReLU(slope)
    acts = {"relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU}
    if kind not in acts or arg:
        raise DwrpruneError(f"unknown activation {name!r}; known: relu, relu6, silu, "
                            "leaky_relu:SLOPE")
    return acts[kind]()


@dataclass(frozen=True)
class Block:
    """One removable unit.  ``name`` is the module path (for plain units, the conv's path)."""

    name: str
    kind: str  # "residual" | "transition" | "plain" | "dense"
    # plain: layers to delete; dense: the layer producing the channels it concatenates
    members: tuple[str, ...] = field(default_factory=tuple)
    shortcut: str | None = None  # transition: projection module path
    post: tuple[str, ...] = field(default_factory=tuple)  # activations after the add

    def to_dict(self) -> dict:
        d = asdict(self)
        d["members"], d["post"] = list(self.members), list(self.post)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Block:
        return cls(d["name"], d["kind"], tuple(d.get("members", ())), d.get("shortcut"),
                   tuple(d.get("post", ())))


class EmptyFeatures(nn.Module):
    """What a removed dense layer becomes: no channels, at its input's batch and size (its
    input may be the list of features before it)."""

    def forward(self, x):
        t = x[0] if isinstance(x, (list, tuple)) else x
        return t.new_zeros(t.shape[0], 0, *t.shape[2:])


def get_module(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path) if path else model


def set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    setattr(get_module(model, parent_path), attr, new)


def _strip_post(node):
    post = []
    while node is not None and type(node).__name__ in _ACTIVATIONS:
        name = _ACTIVATIONS[type(node).__name__]
        if name == "leaky_relu":
            name += f":{float(node._saved_negative_slope):g}"
        post.append(name)
        node = node.next_functions[0][0]
    return node, tuple(reversed(post))


def _input_node(x: torch.Tensor):
    return x.grad_fn if x.grad_fn is not None else ("leaf", id(x))


def _same_node(graph_node, recorded) -> bool:
    if isinstance(recorded, tuple):  # leaf input: the graph holds its AccumulateGrad node
        return (type(graph_node).__name__ == "AccumulateGrad"
                and id(graph_node.variable) == recorded[1])
    return graph_node is recorded


def find_removable_blocks(model: nn.Module, example_input: torch.Tensor,
                          transitions: bool = False) -> list[Block]:
    """Removable blocks of ``model`` in execution order (innermost when nested)."""
    records: dict[str, dict] = {}
    order: list[str] = []
    handles = []

    lists: dict[str, dict] = {}  # modules called on a list of tensors (dense layers)

    def pre_hook(name):
        def f(mod, args):
            if len(args) == 1 and isinstance(args[0], torch.Tensor):
                records[name] = {"in": _input_node(args[0]), "in_shape": tuple(args[0].shape),
                                 "in_id": id(args[0])}
            elif (len(args) == 1 and isinstance(args[0], (list, tuple)) and args[0]
                  and all(isinstance(t, torch.Tensor) for t in args[0])):
                lists[name] = {"in_shape": tuple(args[0][0].shape),
                               "ins": [_input_node(t) for t in args[0]]}
        return f

    def post_hook(name):
        def f(mod, args, out):
            if not isinstance(out, torch.Tensor):
                return
            for rec in (records, lists):
                if name in rec:
                    rec[name].update(out=out.grad_fn, out_shape=tuple(out.shape))
            if name in records:
                order.append(name)
        return f

    for name, mod in model.named_modules():
        if name:
            handles.append(mod.register_forward_pre_hook(pre_hook(name)))
            handles.append(mod.register_forward_hook(post_hook(name)))
    was_training = model.training
    model.eval()
    x = example_input.detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            y = model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    out_nodes: dict = {}
    for n, rec in records.items():  # one node may end several nested modules
        if rec.get("out") is not None:
            out_nodes.setdefault(rec["out"], []).append(n)
    found: list[Block] = []
    for name in order:
        rec = records[name]
        node, post = _strip_post(rec.get("out"))
        if node is None or type(node).__name__ != "AddBackward0":
            continue
        operands = [nf[0] for nf in node.next_functions if nf[0] is not None]
        if len(operands) != 2:
            continue
        if _residual_stream_reaches(node, rec["in"]):
            if rec["in_shape"] == rec["out_shape"]:
                found.append(Block(name, "residual", post=post))
            continue
        if not transitions or post not in ((), ("relu",)):
            continue
        shortcut = next(
            (sc for op in operands for sc in out_nodes.get(op, ())
             if sc.startswith(name + ".") and records[sc]["in_id"] == rec["in_id"]
             and records[sc]["out_shape"] == rec["out_shape"]), None)
        if shortcut is not None:  # a child module on the shortcut, fed by the block input
            found.append(Block(name, "transition", shortcut=shortcut, post=post))
    found = _innermost(found)
    if isinstance(y, torch.Tensor) and y.grad_fn is not None:
        taken = {b.name for b in found}
        found += [b for b in _dense_layers(model, {**records, **lists}, y.grad_fn)
                  if not any(b.name == t or b.name.startswith(t + ".") for t in taken)]
    if not found:  # plain networks only: inside residual nets such units are branch parts
        found = _plain_units(model, records)
    rank = {n: i for i, n in enumerate(order)}
    return sorted(found, key=lambda b: rank.get(b.name, 0))


def _residual_stream_reaches(node, recorded_input, max_adds: int = 4) -> bool:
    """Whether the chain of additions ending at ``node`` has the block input as an operand:
    ``x + f(x)`` (a residual block), or ``(x + f(x)) + g(x + f(x))`` and so on (a
    transformer-style block: attention and MLP branches added in turn onto the stream,
    with stochastic depth and layer scale inside the branches).  Removing such a block
    leaves its input, as for any residual block."""
    frontier = [node]
    for _ in range(max_adds):
        nxt = []
        for n in frontier:
            ops = [nf[0] for nf in n.next_functions if nf[0] is not None]
            if any(_same_node(op, recorded_input) for op in ops):
                return True
            nxt += [op for op in ops if type(op).__name__ == "AddBackward0"]
        frontier = nxt
        if not frontier:
            return False
    return False


def _dense_layers(model: nn.Module, records: dict, output_node) -> list[Block]:
    """Modules whose output only ever joins concatenations after their own input features
    (see the module docstring), keeping their input's spatial size, with a conv producing
    it."""
    consumers: dict = {}
    seen, stack = set(), [output_node]
    while stack:  # who reads each autograd node, over the whole graph
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for nf, _ in node.next_functions:
            if nf is not None:
                consumers.setdefault(nf, []).append(node)
                stack.append(nf)
    by_node: dict = {}
    for name, rec in records.items():
        if rec.get("out") is not None:
            by_node.setdefault(rec["out"], []).append(name)
    found = []
    for node, names in by_node.items():
        outer = min(names, key=lambda n: n.count("."))
        producer = max(names, key=lambda n: n.count("."))
        rec = records[outer]
        ins = rec.get("ins", [rec.get("in")])
        cons = consumers.get(node, [])
        if cons and all(_joins_own_features(c, node, ins) for c in cons) \
                and isinstance(get_module(model, producer), nn.Conv2d) and producer != outer \
                and rec["in_shape"][2:] == rec["out_shape"][2:]:
            found.append(Block(outer, "dense", members=(producer,)))
    return found


def _joins_own_features(cat, node, ins) -> bool:
    """Whether autograd node ``cat`` concatenates ``node`` (not first) onto (some of) the
    features ``ins`` it was computed from.  An inception branch is concatenated with its
    siblings, not with its own input: not dense."""
    ops = [op for op, _ in cat.next_functions if op is not None]
    return (type(cat).__name__ == "CatBackward0" and len(cat.next_functions) >= 2
            and cat.next_functions[0][0] is not node
            and any(_same_node(op, i) for op in ops for i in ins))


def _innermost(blocks: list[Block]) -> list[Block]:
    names = {b.name for b in blocks}
    return [b for b in blocks
            if not any(o != b.name and o.startswith(b.name + ".") for o in names)]


def _plain_units(model: nn.Module, records: dict) -> list[Block]:
    """conv-BN-act triples inside Sequentials whose output shape equals their input shape."""
    units = []
    for seq_name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        kids = list(seq.named_children())
        for i in range(len(kids) - 2):
            (cn, conv), (bn_n, bn), (an, act) = kids[i], kids[i + 1], kids[i + 2]
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
                    and isinstance(act, (nn.ReLU, nn.ReLU6))):
                continue
            path = f"{seq_name}.{cn}" if seq_name else cn
            rec = records.get(path)
            if (rec and conv.groups == 1 and rec["in_shape"] == rec.get("out_shape")):
                members = tuple(f"{seq_name}.{n}" if seq_name else n for n in (cn, bn_n, an))
                units.append(Block(path, "plain", members=members))
    return units


def resolve_blocks(model: nn.Module, example_input: torch.Tensor,
                   names: list[str] | None = None, transitions: bool = False) -> list[Block]:
    """Auto-detected blocks, or the subset a user named explicitly (validated)."""
    found = find_removable_blocks(model, example_input, transitions=transitions)
    if names is None:
        return found
    by_name = {b.name: b for b in found}
    all_found = {b.name: b for b in find_removable_blocks(model, example_input, True)}
    out = []
    for n in names:
        if n in by_name:
            out.append(by_name[n])
        elif n in all_found:
            out.append(all_found[n])
        else:
            raise DwrpruneError(
                f"{n!r} is not a removable block of {type(model).__name__}: it must be a module "
                "whose output is input + branch(input) (or a projection shortcut), or a "
                f"shape-preserving conv-BN-ReLU unit; detected: {sorted(all_found)[:12]}")
    return out


# ---------------------------------------------------------------------------- block kinds
BLOCK_KINDS: Registry = Registry("block kind")


class BlockKind:
    """How one kind of removable block leaves a model: which layers go with it
    (:meth:`branch`) and what takes its place (:meth:`remove`).  A new kind is one class
    registered here, beside the finder that reports its blocks."""

    name = "base"

    def branch(self, block: Block, names: list[str]) -> list[str]:
        """The layers among ``names`` (in their order) that removing ``block`` drops: the
        block's own layers, less its shortcut's."""
        inside = [n for n in names if n == block.name or n.startswith(block.name + ".")]
        if not block.shortcut:
            return inside
        return [n for n in inside
                if n != block.shortcut and not n.startswith(block.shortcut + ".")]

    def remove(self, model: nn.Module, block: Block) -> None:
        raise NotImplementedError


@BLOCK_KINDS.register
class ResidualKind(BlockKind):
    """``x + f(x)``: the block becomes its trailing activations (or the identity)."""

    name = "residual"

    def remove(self, model: nn.Module, block: Block) -> None:
        kept = [activation(p) for p in block.post if p not in _IDEMPOTENT]
        set_module(model, block.name, nn.Sequential(*kept) if kept else nn.Identity())


@BLOCK_KINDS.register
class TransitionKind(BlockKind):
    """A stage transition with a projection shortcut: the block becomes its shortcut."""

    name = "transition"

    def remove(self, model: nn.Module, block: Block) -> None:
        shortcut = get_module(model, block.shortcut)
        set_module(model, block.name,
                   nn.Sequential(shortcut, *(activation(p) for p in block.post)))


@BLOCK_KINDS.register
class PlainKind(BlockKind):
    """A shape-preserving conv-BN-ReLU unit of a plain net: its members become identities."""

    name = "plain"

    def branch(self, block: Block, names: list[str]) -> list[str]:
        return list(block.members)

    def remove(self, model: nn.Module, block: Block) -> None:
        for m in block.members:
            set_module(model, m, nn.Identity())


@BLOCK_KINDS.register
class DenseKind(BlockKind):
    """A DenseNet layer: it yields no features; the layers reading its channels lose them
    (:func:`dwrprune.pruning.surgery.drop_blocks` on a live model, the spec's layer changes
    when a model is rebuilt)."""

    name = "dense"

    def remove(self, model: nn.Module, block: Block) -> None:
        set_module(model, block.name, EmptyFeatures())


def remove_blocks(model: nn.Module, blocks: list[Block]) -> None:
    """Physically remove ``blocks`` from ``model`` (in place), each as its kind says."""
    for b in blocks:
        BLOCK_KINDS.create(b.kind).remove(model, b)
