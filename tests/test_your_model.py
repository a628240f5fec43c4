"""The path a user takes with a model and images of their own: image folders read as the
user reads them, the deployment contract, the CLI taking their class, ignored layers, and
torch Datasets or DataLoaders given directly."""

import json
import textwrap
import warnings

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import dwrprune
from dwrprune import DwrpruneError
from dwrprune.checkpoint import InputSizeWarning
from dwrprune.cli import main
from dwrprune.pipeline import DatasetSource, TorchDataSource, resolve_config
from dwrprune.pipeline.api import as_source


def _folder(root, side=36, splits=(("train", 12), ("val", 4), ("test", 4)), seed=0):
    """Three classes of RGB PNGs at ``side`` px: a class pattern plus noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    protos = rng.integers(0, 256, (3, side, side, 3))
    for split, n in splits:
        for c in range(3):
            d = root / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(n):
                arr = np.clip(protos[c] * 0.6 + rng.normal(0, 40, (side, side, 3)) + 40, 0, 255)
                Image.fromarray(arr.astype(np.uint8)).save(d / f"{i}.png")
    return root


def _user_transform(side, mean, std):
    from torchvision import transforms as T

    return T.Compose([T.Resize((side, side)), T.ToTensor(), T.Normalize(mean, std)])


def test_image_folder_native_side_val_folder_plain_resize_and_own_statistics(tmp_path):
    from torchvision.datasets import ImageFolder

    root = _folder(tmp_path / "imgs")
    val = dwrprune.create_dataset("imagefolder", "val", data_dir=root)
    train = dwrprune.create_dataset("imagefolder", "train", data_dir=root)
    assert val.info.resolution == 36  # the images' own side, not 224
    assert len(val) == 12 and len(train) == 36  # val/ is the validation split, train/ whole
    pixels = torch.stack([_user_transform(36, [0] * 3, [1] * 3)(x) for x, _ in
                          ImageFolder(str(root / "train"))])
    assert val.info.mean == pytest.approx(pixels.mean((0, 2, 3)).tolist(), abs=1e-3)
    assert val.info.std == pytest.approx(pixels.std((0, 2, 3)).tolist(), abs=1e-3)
    # evaluation at a pruned side: a plain resize, as the user deploys it
    small = dwrprune.create_dataset("imagefolder", "val", data_dir=root, resolution=24)
    own = ImageFolder(str(root / "val"), _user_transform(24, val.info.mean, val.info.std))
    assert torch.allclose(small[0][0], own[0][0], atol=0.02)
    crop = dwrprune.create_dataset("imagefolder", "val", data_dir=root, resolution=24,
                                   resize="center-crop")
    assert crop.info.resize == "center-crop" and not torch.allclose(crop[0][0], small[0][0])
    sized = dwrprune.create_dataset("imagefolder", "test", data_dir=root, input_size=20,
                                    mean=[0.5], std=[0.25])
    assert sized.info.resolution == 20 and sized[0][0].shape == (3, 20, 20)
    assert sized.info.mean == (0.5,) * 3
    with pytest.raises(DwrpruneError, match="apply to image folders only"):
        dwrprune.create_dataset("synthetic", "test", input_size=20)
    with pytest.raises(DwrpruneError, match="std must be"):
        dwrprune.create_dataset("imagefolder", "test", data_dir=root, std=[0.0])


def test_reported_accuracy_is_the_users_own(tmp_path):
    """The original's accuracy under dwrprune's default preprocessing is within half a point
    of the user's plain Resize + their data's mean/std."""
    from torchvision.datasets import ImageFolder

    root = _folder(tmp_path / "imgs", side=40, splits=(("train", 30), ("val", 30),
                                                       ("test", 4)))
    pixels = torch.stack([_user_transform(40, [0] * 3, [1] * 3)(x) for x, _ in
                          ImageFolder(str(root / "train"))])
    mean, std = pixels.mean((0, 2, 3)).tolist(), pixels.std((0, 2, 3)).tolist()
    tf = _user_transform(40, mean, std)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, 3))
    loader = torch.utils.data.DataLoader(ImageFolder(str(root / "train"), tf), batch_size=16,
                                         shuffle=True)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    for x, y in loader:  # one epoch: a model with a real (not chance, not perfect) score
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    theirs = dwrprune.evaluate(net, torch.utils.data.DataLoader(
        ImageFolder(str(root / "val"), tf), batch_size=32)).accuracy
    ours = dwrprune.evaluate(net, DatasetSource("imagefolder", str(root)).loader("val", 40))
    assert abs(ours.accuracy - theirs) * 100 <= 0.5
    # and what the old ImageNet-style preprocessing would have reported is another figure
    imagenet = DatasetSource("imagefolder", str(root), mean=[0.485, 0.456, 0.406],
                             std=[0.229, 0.224, 0.225], resize="center-crop")
    assert dwrprune.evaluate(net, imagenet.loader("val", 40)).count == ours.count


def test_first_line_states_the_original_accuracy_and_expect_accuracy_stops(tiny_checkpoint,
                                                                           tmp_path, capsys):
    from dwrprune.pipeline import start_run

    model = dwrprune.load(tiny_checkpoint)
    data = DatasetSource("synthetic", batch_size=32)
    cfg = resolve_config(data="synthetic")
    start_run(model, data, cfg, tmp_path / "ok")
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("original model: ") and "validation accuracy" in line
    acc = float(line.split()[2].rstrip("%"))
    start_run(model, data, cfg.replace(expect_accuracy=acc + 0.5), tmp_path / "ok2")
    with pytest.raises(DwrpruneError, match="expected; set the input size"):
        start_run(model, data, cfg.replace(expect_accuracy=max(0.0, acc - 5)),
                  tmp_path / "bad")
    assert not (tmp_path / "bad" / "config.yaml").exists()  # stopped before any write


def test_contract_in_spec_onnx_and_a_warning_on_another_size(tmp_path, tiny_checkpoint):
    pytest.importorskip("onnxruntime")
    import onnx

    model = dwrprune.load(tiny_checkpoint)
    spec = dwrprune.spec_of(model)
    assert spec.contract["input_size"] == spec.resolution and spec.contract["mean"]
    side = spec.resolution
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model(torch.zeros(2, spec.in_channels, side, side))  # its own size: silent
        model(torch.zeros(2, spec.in_channels, side + 8, side + 8))
        model(torch.zeros(2, spec.in_channels, side + 8, side + 8))  # once only
    sized = [w for w in caught if issubclass(w.category, InputSizeWarning)]
    assert len(sized) == 1 and f"{side}x{side}" in str(sized[0].message)
    files = dwrprune.export_onnx(model, tmp_path / "m.onnx")
    assert files == [tmp_path / "m.onnx"]  # a small model is one file
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert meta["dwrprune.resize"] == "resize" and json.loads(meta["dwrprune.mean"])
    assert meta["dwrprune.contract"] == spec.contract_line()


def test_torch_data_given_directly_is_resized_per_batch():
    x = torch.rand(40, 3, 16, 16)
    y = torch.arange(40) % 4
    ds = torch.utils.data.TensorDataset(x, y)
    src = as_source((ds, torch.utils.data.DataLoader(ds, batch_size=8), ds),
                    resolve_config())
    assert isinstance(src, TorchDataSource)
    xb, yb = next(iter(src.loader("val", 12)))
    assert xb.shape == (8, 3, 12, 12) and yb.shape == (8,)  # the DataLoader's batch size
    assert len(src.loader("train", 16, subset=10, shuffle=True).dataset) == 10
    for bad, msg in ((ds, "one TensorDataset is not enough"), (3, "got int"),
                     ({"train": ds}, "needs val data"), ((ds, [1, 2]), "got list")):
        with pytest.raises(DwrpruneError, match=msg):
            as_source(bad, resolve_config())


@pytest.mark.parametrize("ignore", [["fc"], ["layer2.0"]])
def test_ignored_layers_stay_whole_and_the_cost_stays_exact(ignore):
    model = dwrprune.create_model("resnet_tiny2", num_classes=4, in_channels=3)
    model.dwrprune_spec = dwrprune.make_spec("resnet_tiny2", 4, 3, 16)
    shr = dwrprune.Shrinker(model, ignored_layers=ignore)
    assert all(not b.name.startswith("layer2.0") for b in shr.blocks) or ignore == ["fc"]
    out = shr.shrink(0.5, 0.5, 1.0)
    assert out.macs == shr.macs(0.5, 0.5, 1.0)  # the cost math knows
    before = dict(model.named_modules())
    after = dict(out.model.named_modules())
    for name, m in before.items():
        if any(name == n or name.startswith(n + ".") for n in ignore) and \
                isinstance(m, (nn.Conv2d, nn.Linear)):
            assert after[name].weight.shape == m.weight.shape, name
    assert sum(p.numel() for p in out.model.parameters()) < \
        sum(p.numel() for p in model.parameters())  # the rest was pruned
    with pytest.raises(DwrpruneError, match="is not a module of"):
        dwrprune.Shrinker(model, ignored_layers=["fcc"])
    with pytest.raises(DwrpruneError, match="hold ignored layers"):
        dwrprune.Shrinker(model, ignored_layers=["layer1.0.conv1"], blocks=["layer1.0"])


USER_MODULE = textwrap.dedent("""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(c)
            self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(c)

        def forward(self, x):
            return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))

    class UserNet(nn.Module):
        def __init__(self, width=8, classes=3):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False),
                                      nn.BatchNorm2d(width), nn.ReLU())
            self.blocks = nn.Sequential(*[Block(width) for _ in range(3)])
            self.head = nn.Conv2d(width, 2 * width, 1)
            self.fc = nn.Linear(2 * width, classes)

        def forward(self, x):
            x = torch.relu(self.head(self.blocks(self.stem(x))))
            return self.fc(x.mean((2, 3)))
""")


@pytest.mark.slow
def test_cli_prunes_a_model_class_of_your_own(tmp_path, monkeypatch, config_file, capsys):
    (tmp_path / "usernet_cli.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import usernet_cli

    torch.manual_seed(0)
    torch.save(usernet_cli.UserNet(width=8).state_dict(), tmp_path / "w.pt")
    root = _folder(tmp_path / "imgs", side=24)
    run = tmp_path / "run"
    own = ["--model", "usernet_cli:UserNet", "--model-kwargs", '{"width": 8}']
    assert main(["prune", *own, "--weights", "w.pt", "--data", "imagefolder", "--data-dir",
                 str(root), "--ignore", "fc,blocks.1", "--config", config_file(),
                 "--out", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("original model: ") and "3x24x24 (resize)" in out
    pruned = dwrprune.load(run / "final" / "model.pt", model=usernet_cli.UserNet(width=8))
    assert pruned.fc.in_features == 16 and pruned.blocks[1].conv1.out_channels == 8
    spec = dwrprune.spec_of(pruned)
    assert spec.name == "usernet_cli:UserNet" and spec.mean is not None
    assert "blocks.1" not in spec.removed_blocks
    # later commands name the class again; a checkpoint never imports it
    final = str(run / "final" / "model.pt")
    from dwrprune.models.registry import MODELS

    MODELS.unregister("usernet_cli:UserNet")  # as in a new process
    assert main(["export", "--checkpoint", final, "--onnx", "m.onnx"]) == 2
    assert "give --model usernet_cli:UserNet" in capsys.readouterr().err
    assert main(["export", *own, "--checkpoint", final, "--onnx", "m.onnx"]) == 0
    assert main(["plan", "--run", str(run), *own, "--budgets", "0.3"]) == 0
    # a config file cannot make dwrprune import code
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"model": "os:system"}))
    assert main(["export", "--config", "c.yaml", "--checkpoint", final, "--onnx", "x.onnx"]) == 2
    assert "command line only" in capsys.readouterr().err
    for bad, msg in ((["--model", "no_such_mod:Net"], "cannot import 'no_such_mod'"),
                     (["--model", "usernet_cli:Nope"], "has no callable 'Nope'"),
                     (["--model", "not a name"], "package.module:factory"),
                     (["--weights", "w.pt"], "--weights goes with --model")):
        assert main(["eval", "--checkpoint", final, *bad, "--data", "imagefolder",
                     "--data-dir", str(root)]) == 2
        assert msg in capsys.readouterr().err, bad


README_MODEL = '''
import torch
from torch import nn


class MyNet(nn.Module):
    def __init__(self, width=8, classes=3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(*[nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
            nn.ReLU()) for _ in range(2)])
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))
'''


def _readme_quick_start() -> tuple[str, int]:
    """The README's "your model, your data" Python block, and the lines of code the quick
    start holds (its Python and shell blocks)."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## Quick start: your model, your data", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)
    code = [b for lang, b in blocks if lang == "python"]
    assert len(code) == 1, "one Python block in the quick start"
    return code[0], sum(len(b.strip().splitlines()) for _, b in blocks)


def test_readme_quick_start_is_short():
    _, n = _readme_quick_start()
    assert n <= 30, f"the your-model quick start has {n} lines of code"


@pytest.mark.slow
def test_readme_quick_start_runs_as_pasted(tmp_path):
    """The README's Python quick start, verbatim, in a folder holding what it names (a class
    in mymod.py, its weights in mynet.pt, 48-px RGB images): prune, load back into the
    class, export, and a prediction in onnxruntime from an image fed as the contract says."""
    import subprocess
    import sys

    code, _ = _readme_quick_start()
    (tmp_path / "mymod.py").write_text(README_MODEL)
    _folder(tmp_path / "my_images", side=48, splits=(("train", 30), ("test", 6)))
    sys.path.insert(0, str(tmp_path))
    try:
        import mymod

        torch.manual_seed(0)
        torch.save(mymod.MyNet().state_dict(), tmp_path / "mynet.pt")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("mymod", None)
    (tmp_path / "quick.py").write_text(code)
    proc = subprocess.run([sys.executable, "quick.py"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("my_images/test/c0/0.png -> "), last
    assert int(last.rsplit(" ", 1)[1]) in (0, 1, 2)
    assert (tmp_path / "mine.onnx").is_file() and proc.stdout.startswith("original model: ")
