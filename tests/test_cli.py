import json

import pytest
import torch

import dwrprune
from dwrprune.cli import main


def test_info_model_json(capsys):
    assert main(["info", "--model", "resnet20", "--resolution", "28", "--in-channels", "1",
                 "--no-latency", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 30.5e6 < out["macs"] < 31.5e6


def test_info_latency_table(capsys):
    assert main(["info", "--model", "resnet_tiny", "--resolution", "16", "--batch-sizes", "1,4",
                 "--repeats", "3"]) == 0
    out = capsys.readouterr().out
    assert "batch   1" in out and "batch   4" in out and "MACs" in out


@pytest.mark.parametrize("argv,match", [
    (["info", "--model", "nope"], "unknown model"),
    (["info", "--model", "vgg16_bn", "--resolution", "8", "--no-latency"], "below the minimum"),
    (["eval", "--checkpoint", "/nonexistent.pt"], "does not exist"),
])
def test_errors_exit_2_with_one_line(argv, match, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dwrprune: error:") and match in err and "\n" not in err


def test_train_eval_and_yaml_config(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: resnet_tiny\ndata: synthetic\nsteps: 3\nbatch-size: 16\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["steps"] == 3 and saved["model"] == "resnet_tiny"
    from dwrprune.training.engine import compute_device, resolve_precision

    # the default precision is recorded as what it resolved to here, in the card too
    here = resolve_precision("auto", compute_device())
    assert saved["precision"] == here
    assert json.loads((out / "card.json").read_text())["precision"] == here
    assert main(["eval", "--checkpoint", str(out / "model.pt"), "--data", "synthetic",
                 "--split", "val", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    val = dwrprune.create_dataset("synthetic", "val")
    model = dwrprune.load(out / "model.pt")
    ev = dwrprune.evaluate(model, dwrprune.make_loader(val, 64))
    assert res["split"] == "val" and res["count"] == len(val) == 51
    assert res["accuracy"] == pytest.approx(ev.accuracy)  # the real figure, not just a range


def test_train_warm_restart_from_a_checkpoint(tmp_path, capsys):
    first = tmp_path / "first"
    base = ["--data", "synthetic", "--steps", "2", "--batch-size", "16", "--no-progress"]
    assert main(["train", "--model", "resnet_tiny", *base, "--out", str(first)]) == 0
    start = dwrprune.load(first / "model.pt").state_dict()
    again = tmp_path / "again"
    assert main(["train", "--model", "resnet_tiny", *base, "--lr", "1e-12", "--init",
                 str(first / "model.pt"), "--out", str(again)]) == 0
    card = json.loads((again / "card.json").read_text())
    assert card["init"]["checkpoint"] == str(first / "model.pt")
    assert card["init"]["card"]["test_acc"] == json.loads(
        (first / "card.json").read_text())["test_acc"]
    after = dwrprune.load(again / "model.pt").state_dict()  # lr ~0: the weights it started from
    assert all(torch.allclose(after[k], v, atol=1e-6) for k, v in start.items()
               if "running" not in k and "num_batches" not in k)
    capsys.readouterr()
    assert main(["train", "--model", "resnet_tiny2", *base, "--init", str(first / "model.pt"),
                 "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "needs an unpruned resnet_tiny2" in err and "\n" not in err.strip()


def test_yaml_unknown_option(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("modle: resnet_tiny\n")
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown options ['modle']" in err and "dwrprune train" in err


def test_eval_dataset_mismatch(tmp_path, capsys, fmnist_dir):
    out = tmp_path / "run"
    assert main(["train", "--model", "resnet_tiny", "--data", "synthetic", "--steps", "1",
                 "--out", str(out), "--no-progress"]) == 0
    assert main(["eval", "--checkpoint", str(out / "model.pt"), "--data", "fashion-mnist",
                 "--data-dir", str(fmnist_dir)]) == 2
    assert "input channels" in capsys.readouterr().err


def test_info_lists_the_axes_a_model_offers(capsys):
    assert main(["info", "--model", "resnet_tiny2", "--resolution", "16", "--no-latency",
                 "--json"]) == 0
    axes = json.loads(capsys.readouterr().out)["axes"]
    assert axes["depth"] == {"blocks": 4, "kinds": ["residual"], "why": ""}
    assert axes["width"]["groups"] > 0 and axes["width"]["why"] == ""
    assert axes["resolution"] == {"base": 16, "min": 8}


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["prune", "--help"],
                                  ["plan", "--help"]])
def test_version_and_help_answer_without_importing_torch(argv):
    """Start-up: the answers that need no model come before torch is imported (under a
    second; torch alone takes several)."""
    import subprocess
    import sys

    code = ("import sys\nfrom dwrprune.cli import main\ntry:\n    main(sys.argv[1:])\n"
            "except SystemExit:\n    pass\nassert 'torch' not in sys.modules, 'torch imported'")
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-400:]
    assert "dwrprune" in out.stdout or "usage" in out.stdout


def test_none_on_the_command_line_overrides_a_default_and_a_yaml_value(tmp_path):
    """An option given as ``none`` sets its field to None; one not given leaves the
    default, the preset's or the YAML file's value."""
    import argparse

    from dwrprune.cli.pipeline import _overrides, add_pipeline_args
    from dwrprune.pipeline import resolve_config

    p = argparse.ArgumentParser()
    add_pipeline_args(p)
    yaml = tmp_path / "c.yaml"
    yaml.write_text("latency_round_to: 16\nround_to: 4\n")
    given = _overrides(p.parse_args(["--latency-round-to", "none"]))
    assert list(given) == ["latency_round_to"]
    cfg = resolve_config(None, str(yaml), **given)
    assert cfg.latency_round_to is None and cfg.round_to == 4
    assert resolve_config(None, str(yaml), **_overrides(p.parse_args([]))).latency_round_to \
        == 16
    assert resolve_config(None, None, **_overrides(p.parse_args([]))).latency_round_to == 8
