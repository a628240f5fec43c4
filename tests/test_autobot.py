import pytest
import torch
from torch import nn

from dwrprune import DwrpruneError, count_macs, create_dataset, create_model, load, make_loader
from dwrprune.checkpoint import save_model
from dwrprune.io.spec import make_spec
from dwrprune.pruning.autobot import (
    AutoBotConfig,
    Bottlenecks,
    autobot_prune,
    learn_masks,
    prune_with_masks,
    select_channels,
    soft_cost,
)
from dwrprune.pruning.shrink import Shrinker

MODELS = [("resnet_tiny2", 3, 16), ("mobilenetv2_tiny", 3, 16), ("vgg_tiny", 3, 16),
          ("resnet20", 1, 28)]


def make(name, in_ch, res):
    torch.manual_seed(0)
    m = create_model(name, num_classes=10, in_channels=in_ch).eval()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.bias.data.uniform_(-0.2, 0.2)
    m.dwrprune_spec = make_spec(name, 10, in_ch, res)
    return m


def _binary(bots, seed=1):
    g = torch.Generator().manual_seed(seed)
    keep = []
    with torch.no_grad():
        for gi, info in enumerate(bots.infos):
            per = info.size // info.ch_groups
            k = torch.rand(per, generator=g) > 0.4
            k[0] = True
            bots.alphas[gi].copy_(torch.where(k, torch.tensor(60.0), torch.tensor(-60.0)))
            keep.append(k.repeat(info.ch_groups))
    return keep


@pytest.mark.parametrize("name,in_ch,res", MODELS)
def test_soft_cost_is_exact_for_binary_masks_and_masks_equal_pruning(name, in_ch, res):
    m = make(name, in_ch, res)
    shr = Shrinker(m)
    bots = Bottlenecks(m, shr)
    keep = _binary(bots)
    x = torch.randn(2, in_ch, res, res)
    with torch.no_grad():
        masked = m(x)
    bots.remove()
    cost = soft_cost(shr, bots.infos, res)
    pruned = prune_with_masks(m, shr, bots, keep)
    assert float(cost([k.sum() for k in keep])) == count_macs(pruned, res)
    with torch.no_grad():
        assert torch.allclose(masked, pruned(x), rtol=1e-4, atol=1e-4 * masked.abs().max())
    assert float(cost(bots.counts()).detach()) == pytest.approx(count_macs(pruned, res))


def _loader(res=16, n=128):
    return make_loader(create_dataset("synthetic", "train", subset=n, native_resolution=res),
                       32, shuffle=True)


def test_learned_masks_reach_the_target():
    m = make("resnet_tiny2", 3, 16)
    shr = Shrinker(m)
    bots, cost, target = learn_masks(m, _loader(), 0.5, AutoBotConfig(steps=30), shr,
                                     progress=False)
    keep = select_channels(bots, cost, target)
    pruned = prune_with_masks(m, shr, bots, keep)
    macs = count_macs(pruned, 16)
    assert 0.35 * count_macs(m, 16) <= macs <= target
    assert all(k.any() for k in keep)  # at least one channel per group
    assert all(p.requires_grad for p in m.parameters())  # weights unfrozen afterwards


def test_autobot_method_and_portable_checkpoint(tmp_path):
    m = make("resnet_tiny2", 3, 16)
    out = autobot_prune(m, _loader(), 0.5, AutoBotConfig(steps=10), progress=False)
    assert out.macs <= 0.5 * count_macs(m, 16)
    save_model(tmp_path / "a.pt", out.model, out.spec)
    again = load(tmp_path / "a.pt")
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(out.model(x), again(x))


def test_autobot_as_shrink_channel_criterion():
    m = make("resnet_tiny2", 3, 16)
    s = Shrinker(m, channel_criterion="autobot", criterion_data={"train_loader": _loader()})
    s.channel_criterion.cfg = AutoBotConfig(steps=5)
    out = s.shrink(1, 0.5, 1)
    assert out.spec["arch"]["width"]["criterion"] == "autobot"
    assert out.macs == s.macs(1, 0.5, 1)


@pytest.mark.parametrize("budget,match", [(1.0, "in \\(0, 1\\)"), (0.0, "in \\(0, 1\\)"),
                                          (0.0001, "below what width pruning can reach")])
def test_bad_budgets(budget, match):
    m = make("resnet_tiny2", 3, 16)
    with pytest.raises(DwrpruneError, match=match):
        autobot_prune(m, _loader(), budget, AutoBotConfig(steps=2), progress=False)


def test_model_without_prunable_layers():
    m = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    with pytest.raises(DwrpruneError, match="no Conv2d|no prunable"):
        shr = Shrinker(m, resolution=8, in_channels=3)
        Bottlenecks(m, shr)


@pytest.mark.slow
def test_cli_autobot(tmp_path, capsys):
    from dwrprune.cli import main

    ck = tmp_path / "tiny"
    assert main(["train", "--model", "resnet_tiny2", "--data", "synthetic", "--steps", "5",
                 "--out", str(ck), "--no-progress"]) == 0
    out = tmp_path / "ab.pt"
    assert main(["autobot", "--checkpoint", str(ck / "model.pt"), "--data", "synthetic",
                 "--budget", "0.5", "--steps", "5", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "autobot" in printed and f"wrote {out}" in printed
    small = load(out)
    assert small.dwrprune_spec["arch"]["method"] == "autobot"
    assert count_macs(small, 16, 3) <= 0.5 * count_macs(load(ck / "model.pt"), 16, 3)
