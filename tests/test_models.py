import pytest
import torch

from dwrprune import DwrpruneError, count_macs, count_params, create_model, list_models
from dwrprune.models import check_resolution, get_entry
from dwrprune.models.torchvision_models import torchvision_names

REGISTERED = list_models()
TV_SAMPLE = ["tv/resnet18", "tv/resnet50", "tv/mobilenet_v2", "tv/mobilenet_v3_small",
             "tv/efficientnet_b0", "tv/regnet_x_400mf", "tv/densenet121", "tv/resnext50_32x4d"]


@pytest.mark.parametrize("name", REGISTERED)
@pytest.mark.parametrize("in_channels", [1, 3])
def test_registered_model_runs_at_min_resolution(name, in_channels):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, in_channels=in_channels).eval()
    res = get_entry(name).min_resolution
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, res, res))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", TV_SAMPLE)
def test_torchvision_model_single_channel_small_input(name):
    model = create_model(name, num_classes=5, in_channels=1).eval()
    res = get_entry(name).min_resolution
    with torch.no_grad():
        assert model(torch.randn(1, 1, res, res)).shape == (1, 5)


def test_every_torchvision_name_resolves():
    names = torchvision_names()
    assert "resnet50" in names and "efficientnet_b0" in names
    for n in names:
        assert get_entry(f"tv/{n}").min_resolution >= 32


@pytest.mark.parametrize(
    "name,in_ch,res,macs_m,params_m",
    [("resnet20", 3, 32, 40.6, 0.27), ("resnet56", 3, 32, 125.5, 0.85),
     ("resnet20", 1, 28, 31.0, 0.27)],
)
def test_literature_cost_figures(name, in_ch, res, macs_m, params_m):
    model = create_model(name, num_classes=10, in_channels=in_ch)
    macs = count_macs(model, res) / 1e6
    params = count_params(model) / 1e6
    # Projection shortcuts add ~0.5% MACs over the zero-padding variant the papers quote.
    assert macs == pytest.approx(macs_m, rel=0.01)
    assert params == pytest.approx(params_m, rel=0.02)


def test_macs_scale_with_resolution_squared():
    model = create_model("resnet20", in_channels=1)
    assert count_macs(model, 16) == pytest.approx(count_macs(model, 32) / 4, rel=0.01)


def test_unknown_model_lists_available():
    with pytest.raises(DwrpruneError, match="available: .*resnet20"):
        create_model("resnet21")
    with pytest.raises(DwrpruneError, match="torchvision"):
        create_model("tv/not_a_model")


def test_resolution_below_minimum_is_refused():
    with pytest.raises(DwrpruneError, match="below the minimum 16"):
        check_resolution("vgg16_bn", 12)
    check_resolution("vgg16_bn", 16)


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_bad_num_classes(bad):
    with pytest.raises(DwrpruneError, match="num_classes"):
        create_model("resnet_tiny", num_classes=bad)


def test_timm_models_resolve_with_their_input_limits(monkeypatch):
    from dwrprune.models import get_entry, list_models

    m = create_model("timm/resnet10t", num_classes=7, in_channels=1).eval()
    assert m(torch.zeros(1, 1, 32, 32)).shape == (1, 7)
    assert get_entry("timm/resnet10t").min_resolution == 32
    assert get_entry("timm/vit_tiny_patch16_224").min_resolution == 224  # fixed input size
    assert "timm/resnet10t" in list_models(include_timm=True)
    with pytest.raises(DwrpruneError, match="unknown timm model 'not_a_model'"):
        create_model("timm/not_a_model")
    import builtins

    real_import = builtins.__import__

    def no_timm(name, *args, **kwargs):
        if name == "timm":
            raise ImportError("no timm")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    with pytest.raises(DwrpruneError, match=r"pip install 'dwrprune\[timm\]'"):
        create_model("timm/resnet10t")
