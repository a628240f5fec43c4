import pytest
import torch

from dwrprune import DwrpruneError, create_model, load, save_model
from dwrprune.io.spec import make_spec


def _saved(tmp_path, name="resnet_tiny"):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, in_channels=1).eval()
    path = tmp_path / "m.pt"
    save_model(path, model, make_spec(name, 5, 1, 16, "synthetic"), {"note": "x"})
    return model, path


@pytest.mark.parametrize("name", ["resnet_tiny", "vgg_tiny", "mobilenetv2_tiny"])
def test_round_trip_identical_outputs(tmp_path, name):
    model, path = _saved(tmp_path, name)
    again = load(path)
    x = torch.randn(3, 1, 16, 16)
    assert torch.equal(model(x), again(x))
    assert again.dwrprune_spec["input"]["resolution"] == 16
    raw = torch.load(path, weights_only=True)  # no pickled modules
    assert raw["format"] == "dwrprune" and raw["meta"] == {"note": "x"}
    assert not list(tmp_path.glob("*.tmp"))


def test_truncated_checkpoint(tmp_path):
    _, path = _saved(tmp_path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DwrpruneError, match="not a readable checkpoint"):
        load(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(DwrpruneError, match="does not exist"):
        load(tmp_path / "nope.pt")


def test_pickled_module_refused(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save(create_model("resnet_tiny"), path)
    with pytest.raises(DwrpruneError, match="not a readable checkpoint"):
        load(path)


def test_foreign_dict_refused(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(create_model("resnet_tiny").state_dict(), path)
    with pytest.raises(DwrpruneError, match="not a dwrprune model checkpoint"):
        load(path)


def test_mismatched_weights(tmp_path):
    _, path = _saved(tmp_path)
    raw = torch.load(path, weights_only=True)
    raw["spec"]["model"]["num_classes"] = 7
    torch.save(raw, path)
    with pytest.raises(DwrpruneError, match="does not match the model.*fc.weight"):
        load(path)
