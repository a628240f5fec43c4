import pytest
import torch

import dwrprune
from dwrprune.training.data import FASHION_MNIST_DIR

# What each bundled checkpoint is, and the test accuracy it must keep (its card's target).
EXPECTED = {"resnet20-fashion-mnist": ("resnet20", 0.93),
            "resnet56-fashion-mnist": ("resnet56", 0.939),
            "mobilenetv2-fashion-mnist": ("mobilenetv2", 0.935)}


def test_every_bundled_checkpoint_is_known():
    assert "resnet20-fashion-mnist" in dwrprune.pretrained.available()
    assert set(dwrprune.pretrained.available()) <= set(EXPECTED)


@pytest.mark.parametrize("name", dwrprune.pretrained.available())
def test_bundled_checkpoint_loads_safely_and_runs(name):
    arch, target = EXPECTED[name]
    path = dwrprune.pretrained.path(name)
    raw = torch.load(path, weights_only=True)
    assert raw["spec"]["model"] == {"name": arch, "num_classes": 10, "in_channels": 1}
    model = dwrprune.load(path)
    with torch.no_grad():
        out = model(torch.randn(4, 1, 28, 28))
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    card = dwrprune.pretrained.card(name)
    assert card["command"].startswith("dwrprune train") and isinstance(card["seed"], int)
    if "init" in card:  # a warm restart: the checkpoint it started from is on record too
        assert card["init"]["card"]["command"].startswith("dwrprune train")
    assert card["test_acc"] >= target
    params = sum(p.numel() for p in model.parameters())
    assert path.stat().st_size < 5 * params + 200_000  # weights only, float32, no optimizer


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST_DIR.exists(), reason="needs dataset-fashion-mnist")
@pytest.mark.parametrize("name", dwrprune.pretrained.available())
def test_bundled_checkpoint_test_accuracy(name):
    model = dwrprune.load(dwrprune.pretrained.path(name))
    test = dwrprune.make_loader(dwrprune.create_dataset("fashion-mnist", "test"), 500)
    acc = dwrprune.evaluate(model, test).accuracy
    assert acc >= EXPECTED[name][1]
    assert acc == pytest.approx(dwrprune.pretrained.card(name)["test_acc"], abs=1e-4)
