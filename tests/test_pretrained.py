import pytest
import torch

import dwrprune
from dwrprune.data import FASHION_MNIST_DIR


def test_bundled_checkpoint_loads_safely_and_runs():
    path = dwrprune.pretrained.path()
    raw = torch.load(path, weights_only=True)
    assert raw["spec"]["model"] == {"name": "resnet20", "num_classes": 10, "in_channels": 1}
    model = dwrprune.load(path)
    with torch.no_grad():
        out = model(torch.randn(4, 1, 28, 28))
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    card = dwrprune.pretrained.card()
    assert card["command"].startswith("dwrprune train") and card["seed"] == 0
    assert card["test_acc"] >= 0.93
    assert path.stat().st_size < 2_000_000


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST_DIR.exists(), reason="needs dataset-fashion-mnist")
def test_bundled_checkpoint_test_accuracy():
    model = dwrprune.load(dwrprune.pretrained.path())
    test = dwrprune.make_loader(dwrprune.create_dataset("fashion-mnist", "test"), 500)
    acc = dwrprune.evaluate(model, test).accuracy
    assert acc >= 0.93
    assert acc == pytest.approx(dwrprune.pretrained.card()["test_acc"], abs=1e-4)
