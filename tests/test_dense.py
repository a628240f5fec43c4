"""Depth in dense networks: dense layers found from the traced graph, removed with the layers
that read their channels resized, costed exactly, and rebuilt from the spec."""

import copy

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import dwrprune
from dwrprune.pruning.blocks import EmptyFeatures
from dwrprune.pruning.surgery import drop_blocks


def _densenet(**kw):
    from torchvision.models.densenet import DenseNet

    torch.manual_seed(0)
    return DenseNet(**{"growth_rate": 4, "block_config": (3, 2), "num_init_features": 8,
                       "bn_size": 2, "num_classes": 10, **kw}).eval()


def _macs(model, res):
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, res, res))
    return counter.get_total_flops() // 2


def test_dense_layers_are_found_and_nothing_else():
    shr = dwrprune.Shrinker(_densenet(), resolution=16)
    assert [(b.name, b.kind) for b in shr.blocks] == [
        (f"features.denseblock{i}.denselayer{j}", "dense")
        for i, n in ((1, 3), (2, 2)) for j in range(1, n + 1)]
    assert all(b.members == (b.name + ".conv2",) for b in shr.blocks)
    assert shr.axes()["depth"] == {"blocks": 5, "kinds": ["dense"], "why": ""}


@pytest.mark.parametrize("layers", [["features.denseblock1.denselayer1"],
                                    ["features.denseblock1.denselayer3"],
                                    ["features.denseblock2.denselayer2"],
                                    ["features.denseblock1.denselayer1",
                                     "features.denseblock1.denselayer2",
                                     "features.denseblock2.denselayer1"]])
def test_dense_layers_that_add_nothing_remove_with_unchanged_outputs(layers):
    model = _densenet()
    with torch.no_grad():  # their outputs are all zeros: the rest of the network ignores them
        for layer in layers:
            model.get_submodule(layer + ".conv2").weight.zero_()
    blocks = [b for b in dwrprune.Shrinker(model, resolution=16).blocks if b.name in layers]
    x = torch.randn(2, 3, 16, 16)
    reduced = copy.deepcopy(model)
    drop_blocks(reduced, blocks, torch.zeros(1, 3, 16, 16))
    assert all(isinstance(reduced.get_submodule(n), EmptyFeatures) for n in layers)
    with torch.no_grad():
        torch.testing.assert_close(reduced(x), model(x), atol=1e-5, rtol=1e-5)
    assert _macs(reduced, 16) < _macs(model, 16)


@pytest.mark.parametrize("point", [(0.6, 1.0, 1.0), (0.4, 0.5, 0.75), (0.2, 0.8, 0.5),
                                   (1.0, 0.5, 1.0)])
def test_dense_shrink_is_exact_and_rebuilds_from_its_spec(tmp_path, point):
    shr = dwrprune.Shrinker(_densenet(), resolution=16)
    out = shr.shrink(*point)
    res = out.spec["input"]["resolution"]
    assert out.macs == shr.macs(*point) == _macs(out.model, res)
    n_removed = len(shr.blocks) - round(point[0] * len(shr.blocks))
    assert len(out.spec["arch"]["removed_blocks"]) == n_removed
    dwrprune.save_model(tmp_path / "m.pt", out.model, out.spec)
    again = dwrprune.load(tmp_path / "m.pt", model=_densenet())
    x = torch.randn(2, 3, res, res)
    with torch.no_grad():
        assert torch.equal(again(x), out.model(x))


def test_densenet_pruned_twice_keeps_one_spec(tmp_path):
    shr = dwrprune.Shrinker(_densenet(), resolution=16)
    once = shr.shrink(0.6, 0.75, 1.0)
    twice = dwrprune.Shrinker(once.model).shrink(0.5, 0.8, 1.0)
    assert len(twice.spec["arch"]["removed_blocks"]) == 3
    dwrprune.save_model(tmp_path / "m.pt", twice.model, twice.spec)
    again = dwrprune.load(tmp_path / "m.pt", model=_densenet())
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(again(x), twice.model(x))
    assert isinstance(again, nn.Module)


class _Concat(nn.Module):
    """``cat([x, f(x)])`` written by hand (dense), or ``cat([a(x), b(x)])`` (inception)."""

    def __init__(self, dense: bool):
        super().__init__()
        self.dense = dense
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.a = nn.Sequential(nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1))
        self.b = nn.Sequential(nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 1))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(10 if dense else 8, 5))

    def forward(self, x):
        x = self.stem(x)
        return self.head(torch.cat([x, self.a(x)] if self.dense else [self.a(x), self.b(x)], 1))


def test_a_hand_written_dense_layer_is_found_and_inception_branches_are_not():
    dense = dwrprune.Shrinker(_Concat(True).eval(), resolution=12)
    assert [(b.name, b.kind, b.members) for b in dense.blocks] == [("a", "dense", ("a.2",))]
    out = dense.shrink(0.4, 1.0, 1.0)  # no block of one kept
    assert isinstance(out.model.a, EmptyFeatures) and out.model.head[2].in_features == 6
    assert out.macs == _macs(out.model, 12)
    assert dwrprune.Shrinker(_Concat(False).eval(), resolution=12).blocks == []
