import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from dwrprune import DwrpruneError, count_macs, create_model, load, save_model
from dwrprune.io.spec import make_spec
from dwrprune.pruning.blocks import get_module
from dwrprune.pruning.shrink import Shrinker, shrink
from dwrprune.pruning.surgery import build_graph

# (name, in_channels, base resolution); torchvision models need >= 32 px after shrinking.
# The quick loop keeps one model of each kind (plain residual, VGG, inverted residual, a
# torchvision and two timm models); the larger ones, and the other mobile variants, run
# with the slow tests (CI runs every one).
_slow = pytest.mark.slow
MODELS = [
    ("resnet20", 1, 28), ("resnet56", 3, 32), ("vgg16_bn", 3, 32), ("mobilenetv2", 3, 32),
    ("tv/resnet18", 3, 64), pytest.param("tv/resnet50", 3, 64, marks=_slow),
    pytest.param("tv/mobilenet_v2", 3, 64, marks=_slow),
    pytest.param("tv/mobilenet_v3_small", 3, 64, marks=_slow),
    pytest.param("tv/efficientnet_b0", 3, 64, marks=_slow),
    pytest.param("tv/regnet_x_400mf", 3, 64, marks=_slow),
    pytest.param("tv/densenet121", 1, 64, marks=_slow),
    pytest.param("tv/resnext50_32x4d", 3, 64, marks=_slow),
    ("timm/resnet10t", 3, 64), pytest.param("timm/mobilenetv3_small_050", 3, 64, marks=_slow),
    ("timm/lcnet_050", 3, 64),
    pytest.param("timm/regnetx_002", 3, 64, marks=_slow),
    pytest.param("timm/convnext_atto", 3, 64, marks=_slow),
    pytest.param("timm/efficientnet_b0", 3, 64, marks=_slow),
]
TINY = [("resnet_tiny2", 3, 16), ("vgg_tiny", 3, 16), ("mobilenetv2_tiny", 3, 16)]


def make(name, in_ch, res, seed=0):
    torch.manual_seed(seed)
    m = create_model(name, num_classes=10, in_channels=in_ch).eval()
    # Give BatchNorm non-trivial statistics so that pruning errors would show in outputs.
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.1, 0.1)
    m.dwrprune_spec = make_spec(name, 10, in_ch, res)
    return m


def state_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name,in_ch,res", MODELS + TINY)
def test_identity_point_keeps_outputs(name, in_ch, res):
    m = make(name, in_ch, res)
    out = shrink(m, 1, 1, 1)
    x = torch.randn(2, in_ch, res, res)
    with torch.no_grad():
        assert torch.allclose(m(x), out.model(x), atol=1e-5)
    assert out.macs == count_macs(m, res)


@pytest.mark.parametrize("name,in_ch,res", MODELS)
def test_points_including_extremes_match_cost_query(name, in_ch, res):
    m = make(name, in_ch, res)
    before = copy.deepcopy(m.state_dict())
    s = Shrinker(m, transitions=True)
    has_blocks = bool(s.blocks)
    r_min = s.min_resolution / res
    for d, w, r in [(0.5, 0.5, 0.75), (0.05, 0.05, r_min), (1.0, 0.9, 1.0)]:
        d = d if has_blocks else 1.0
        out = s.shrink(d, w, max(r, r_min))
        x = torch.randn(1, in_ch, out.spec["input"]["resolution"],
                        out.spec["input"]["resolution"])
        with torch.no_grad():
            assert torch.isfinite(out.model(x)).all()
        assert out.macs == s.macs(d, w, max(r, r_min))
        assert out.macs == count_macs(out.model, out.spec["input"]["resolution"], in_ch)
    assert state_equal_dict(m.state_dict(), before), "the input model was modified"


def state_equal_dict(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name,block_bn", [
    ("resnet_tiny2", "bn2"), ("tv/resnet18", "bn2"), ("mobilenetv2_tiny", None)])
def test_removing_zeroed_residual_branch_keeps_outputs(name, block_bn):
    res = 32 if name.startswith("tv/") else 16
    m = make(name, 3, res)
    s = Shrinker(m)
    victim = s.blocks[0]
    block = get_module(m, victim.name)
    bns = [mod for mod in block.modules() if isinstance(mod, nn.BatchNorm2d)]
    last_bn = getattr(block, block_bn) if block_bn else bns[-1]
    last_bn.weight.data.zero_()
    last_bn.bias.data.zero_()
    s = Shrinker(m, depth_criterion="weight_norm")  # zeroed branch ranks lowest
    n = len(s.blocks)
    out = s.shrink((n - 1) / n, 1, 1)
    assert [b["name"] for b in out.spec["arch"]["removed_blocks"]] == [victim.name]
    x = torch.randn(2, 3, res, res)
    with torch.no_grad():
        assert torch.allclose(m(x), out.model(x), atol=1e-5)


def _zero_channels(model, res, in_ch, w, classifier):
    """Zero, in every prunable group, the channels width pruning at ``w`` would drop, on the
    producer side (BN scale and shift) and the consumer side (input weights)."""
    from dwrprune.cost.rounding import kept_channels

    dg, groups = build_graph(model, torch.zeros(1, in_ch, res, res), [classifier])
    with torch.no_grad():
        for g in groups:
            n = len(g[0][1])
            k = n - kept_channels(n, w)
            idx = torch.arange(k)
            for dep, _ in g:
                mod = dep.target.module
                if isinstance(mod, nn.BatchNorm2d):
                    mod.weight[idx] = 0
                    mod.bias[idx] = 0
                elif isinstance(mod, (nn.Conv2d, nn.Linear)) and not dg.is_out_channel_pruning_fn(
                        dep.handler):
                    mod.weight[:, idx] = 0
                elif isinstance(mod, (nn.Conv2d, nn.Linear)):
                    mod.weight[idx] = 0


@pytest.mark.parametrize("name", ["vgg_tiny", "resnet_tiny2"])
def test_removing_zeroed_channels_keeps_outputs(name):
    m = make(name, 3, 16)
    s = Shrinker(m)
    _zero_channels(m, 16, 3, 0.75, s.classifier)
    out = shrink(m, 1, 0.75, 1, channel_criterion="l1")
    assert out.macs < count_macs(m, 16)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(m(x), out.model(x), atol=1e-5)


_SHRINKERS = {}


def _shrinker(name):
    if name not in _SHRINKERS:
        _SHRINKERS[name] = Shrinker(make(name, 3, 16), transitions=True)
    return _SHRINKERS[name]


frac = st.floats(min_value=0.05, max_value=1.0)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from([t[0] for t in TINY]), d=frac, w=frac,
       r=st.floats(min_value=0.5, max_value=1.0))
def test_random_points_run_and_cost_query_is_exact(name, d, w, r):
    s = _shrinker(name)
    out = s.shrink(d, w, r)
    res = out.spec["input"]["resolution"]
    with torch.no_grad():
        assert out.model(torch.randn(1, 3, res, res)).shape == (1, 10)
    assert count_macs(out.model, res, 3) == s.macs(d, w, r) == out.macs


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from([t[0] for t in TINY]), d=frac, w=frac,
       r=st.floats(min_value=0.5, max_value=1.0), shrink_by=st.floats(0.1, 1.0),
       axis=st.integers(0, 2))
def test_macs_never_increase_when_an_axis_decreases(name, d, w, r, shrink_by, axis):
    s = _shrinker(name)
    point = [d, w, r]
    lower = list(point)
    lower[axis] = max(0.5 if axis == 2 else 0.05, point[axis] * shrink_by)
    assert s.macs(*lower) <= s.macs(*point)


@pytest.mark.parametrize("d,w,r,match", [
    (0, 1, 1, "d must be in"), (1, 1.2, 1, "w must be in"), (1, 1, -0.5, "r must be in"),
    (1, 1, 0.1, "below this model's minimum"), ("x", 1, 1, "d must be a number"),
])
def test_bad_points(d, w, r, match):
    m = make("resnet_tiny2", 3, 16)
    with pytest.raises(DwrpruneError, match=match):
        shrink(m, d, w, r)


@pytest.mark.slow
def test_no_removable_blocks_is_clear():
    m = make("tv/squeezenet1_1", 3, 64)
    with pytest.raises(DwrpruneError, match="no removable blocks"):
        shrink(m, 0.5, 1, 1)
    assert shrink(m, 1, 0.5, 1).macs < count_macs(m, 64)


def test_explicit_block_list_and_unknown_block():
    m = make("resnet_tiny2", 3, 16)
    s = Shrinker(m, blocks=["layer2.1"])
    assert [b.name for b in s.blocks] == ["layer2.1"]
    out = s.shrink(0.01, 1, 1)
    assert out.spec["arch"]["removed_blocks"][0]["name"] == "layer2.1"
    with pytest.raises(DwrpruneError, match="not a removable block"):
        Shrinker(m, blocks=["layer2.0.conv1"])


def test_transition_replaced_by_projection():
    m = make("resnet_tiny2", 3, 16)
    s = Shrinker(m, transitions=True)
    kinds = {b.name: b.kind for b in s.blocks}
    assert kinds["layer2.0"] == "transition" and kinds["layer1.0"] == "residual"
    out = s.shrink(0.05, 1, 1)
    assert isinstance(get_module(out.model, "layer2.0"), nn.Sequential)
    assert out.macs == s.macs(0.05, 1, 1)


def test_failed_shrink_leaves_model_intact():
    m = make("resnet_tiny2", 3, 16)
    before = copy.deepcopy(m.state_dict())

    class Broken:
        name = "broken"

        def group_scores(self, group, dg):
            raise RuntimeError("boom")

    with pytest.raises(DwrpruneError, match="boom"):
        shrink(m, 0.5, 0.5, 1, channel_criterion=Broken())
    assert state_equal_dict(before, m.state_dict())


def _kept_stem_channels(original: nn.Module, pruned: nn.Module) -> tuple[int, ...]:
    """Which filters of the first conv survived: each kept filter matched to the original's
    (the stem reads the image, whose channels are never pruned)."""
    first = [m for m in original.modules() if isinstance(m, nn.Conv2d)][0].weight
    kept = [m for m in pruned.modules() if isinstance(m, nn.Conv2d)][0].weight
    return tuple(int(torch.nonzero(torch.all((first - k).abs() < 1e-7, dim=(1, 2, 3)))[0])
                 for k in kept)


def test_channel_criteria_choose_different_channels():
    """Each criterion runs and leaves its name in the spec, and they do not all keep the same
    channels (a criterion that was silently ignored would)."""
    from dwrprune import create_dataset, make_loader

    m = make("resnet_tiny2", 3, 16)
    data = {"train_loader": make_loader(create_dataset("synthetic", "train", subset=32), 8)}
    kept = {}
    for criterion in ["l1", "l2", "bn_scale", "random", "taylor"]:
        s = Shrinker(m, channel_criterion=criterion, criterion_data=data)
        out = s.shrink(1, 0.5, 1)
        assert out.spec["arch"]["width"]["criterion"] == criterion
        assert out.macs == s.macs(1, 0.5, 1)
        kept[criterion] = _kept_stem_channels(m, out.model)
    assert len(kept["l1"]) == len(set(kept["l1"])) > 0
    assert kept["l1"] != kept["random"]
    assert len(set(kept.values())) >= 3, kept


def test_a_registered_channel_criterion_is_one_class():
    """Adding a criterion: one class, registered; shrink then takes it by name."""
    from dwrprune.pruning.criteria import CHANNEL_CRITERIA

    @CHANNEL_CRITERIA.register
    class FirstChannels:
        name = "first_channels"
        needs: frozenset[str] = frozenset()

        def group_scores(self, group, dg):
            n = len(group[0][1])
            return torch.arange(n, 0, -1, dtype=torch.float32)  # keep the lowest indices

    try:
        m = make("resnet_tiny2", 3, 16)
        out = Shrinker(m, channel_criterion="first_channels").shrink(1, 0.5, 1)
        k = len(_kept_stem_channels(m, out.model))
        assert _kept_stem_channels(m, out.model) == tuple(range(k))
        assert out.spec["arch"]["width"]["criterion"] == "first_channels"
        l1 = Shrinker(m, channel_criterion="l1").shrink(1, 0.5, 1)
        assert _kept_stem_channels(m, l1.model) != tuple(range(k))
    finally:
        CHANNEL_CRITERIA.unregister("first_channels")
    with pytest.raises(DwrpruneError, match="unknown channel criterion 'first_channels'"):
        Shrinker(m, channel_criterion="first_channels")


def test_loss_depth_criterion_and_recalibration():
    from dwrprune import create_dataset, make_loader

    m = make("resnet_tiny2", 3, 16)
    tr = make_loader(create_dataset("synthetic", "train", subset=64), 16, shuffle=True)
    va = make_loader(create_dataset("synthetic", "val"), 16)
    s = Shrinker(m, depth_criterion="loss",
                 criterion_data={"train_loader": tr, "val_loader": va})
    order = s.block_order()
    assert len(order) == len(s.blocks) and set(s.block_scores) == {b.name for b in s.blocks}

    def loader_at(res):
        return make_loader(create_dataset("synthetic", "train", resolution=res, subset=64), 16)

    out = s.shrink(0.5, 0.75, 0.75, recalibrate=loader_at, recal_batches=2)
    assert out.spec["input"]["resolution"] == 12
    bn = next(x for x in out.model.modules() if isinstance(x, nn.BatchNorm2d))
    assert int(bn.num_batches_tracked) == 2


def test_round_to():
    m = make("resnet_tiny2", 3, 16)
    out = shrink(m, 1, 0.6, 1, round_to=4)
    convs = [x for x in out.model.modules() if isinstance(x, nn.Conv2d)][1:]
    assert all(c.out_channels % 4 == 0 for c in convs)


@pytest.mark.parametrize("name,in_ch,res", TINY + [("resnet20", 1, 28), ("tv/resnet18", 3, 64)])
def test_portable_checkpoint_round_trip(tmp_path, name, in_ch, res):
    m = make(name, in_ch, res)
    out = shrink(m, 0.5, 0.6, 0.75, transitions=True)
    path = tmp_path / "pruned.pt"
    save_model(path, out.model, out.spec)
    raw = torch.load(path, weights_only=True)
    arch = raw["spec"]["arch"]
    assert arch["requested"] == {"d": 0.5, "w": 0.6, "r": 0.75}
    n = len(arch["removable_blocks"])  # realised: whole blocks and whole pixels
    assert arch["point"]["d"] == (n - len(arch["removed_blocks"])) / n
    assert arch["point"]["r"] == out.spec["input"]["resolution"] / res
    again = load(path)
    r2 = out.spec["input"]["resolution"]
    x = torch.randn(2, in_ch, r2, r2)
    with torch.no_grad():
        assert torch.equal(out.model(x), again(x))


@pytest.mark.slow
def test_onnx_export_matches_pytorch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from dwrprune.export import export_onnx

    m = make("resnet_tiny2", 3, 16)
    out = shrink(m, 0.5, 0.5, 0.75)
    path = tmp_path / "m.onnx"
    export_onnx(out.model, path, 12, 3)
    sess = ort.InferenceSession(str(path))
    x = torch.randn(5, 3, 12, 12)
    got = sess.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = out.model(x).numpy()
    assert got.shape == (5, 10)
    assert abs(got - want).max() < 1e-4


class _LeakyNet(nn.Module):
    """Residual blocks that end in ``act(x + f(x))`` with a LeakyReLU or SiLU (CSPNet)."""

    def __init__(self, act):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), act())
        self.blocks = nn.Sequential(*(_LeakyBlock(act) for _ in range(3)))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


class _LeakyBlock(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.act = act()

    def forward(self, x):
        return self.act(self.f(x) + x)


@pytest.mark.parametrize("act,post", [(lambda: nn.LeakyReLU(0.1), "leaky_relu:0.1"),
                                      (nn.SiLU, "silu")])
def test_blocks_ending_in_another_activation_remove_to_that_activation(tmp_path, act, post):
    torch.manual_seed(0)
    net = _LeakyNet(act).eval()
    net.dwrprune_spec = make_spec(None, 4, 3, 8)
    with torch.no_grad():  # block 1 adds nothing: removing it must leave act(x), not x
        net.blocks[1].f[1].weight.zero_()
        net.blocks[1].f[1].bias.zero_()
    shr = Shrinker(net)
    assert [(b.name, b.post) for b in shr.blocks] == [(f"blocks.{i}", (post,)) for i in range(3)]
    shr.block_order = lambda: [b for b in shr.blocks if b.name == "blocks.1"]
    out = shr.shrink(0.67, 1.0, 1.0)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(out.model(x), net(x))
    save_model(tmp_path / "m.pt", out.model, out.spec)
    again = load(tmp_path / "m.pt", model=_LeakyNet(act))
    with torch.no_grad():
        assert torch.equal(again(x), out.model(x))
    out.spec["arch"]["removed_blocks"][0]["post"] = ["leaky_relu:7"]
    save_model(tmp_path / "bad.pt", out.model, out.spec)
    with pytest.raises(DwrpruneError, match="leaky_relu needs a slope"):
        load(tmp_path / "bad.pt", model=_LeakyNet(act))


class _FixedStream(nn.Module):
    """Residual blocks straight on an 8-channel input, and a head that hard-codes the
    stream's 8 channels: the stream's channel group cannot be pruned, and its root (the
    first block's last conv) lies in a removable block."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(*(_LeakyBlock(nn.ReLU) for _ in range(3)))
        self.mix = nn.Conv2d(8, 6, 1)
        self.head = nn.Linear(8 + 6, 4)

    def forward(self, x):
        x = self.blocks(x)
        pooled = x.reshape(x.shape[0], 8, -1).mean(-1)  # the model's own code sizes it
        return self.head(torch.cat([pooled, self.mix(x).mean((2, 3))], 1))


def test_a_group_left_whole_stays_whole_when_its_root_block_is_removed():
    torch.manual_seed(0)
    net = _FixedStream().eval()
    net.dwrprune_spec = make_spec(None, 4, 8, 8)
    with pytest.warns(UserWarning, match="leaves 1 channel group"):
        shr = Shrinker(net)
        shr.groups()
    assert "blocks.0.f.0" in shr.whole_groups and "blocks.1.f.0" in shr.whole_groups
    shr.block_order = lambda: [b for b in shr.blocks if b.name == "blocks.0"]
    out = shr.shrink(0.67, 0.5, 1.0)  # the stream's root went with blocks.0
    assert out.model(torch.randn(2, 8, 8, 8)).shape == (2, 4)
    assert out.model.mix.out_channels == 3 and out.macs == shr.macs(0.67, 0.5, 1.0)
