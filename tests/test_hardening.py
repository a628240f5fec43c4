"""Hostile and careless input: nothing dwrprune reads runs code, no input ends in a traceback,
and no run folder is left saying one thing while holding another."""

import copy
import fcntl
import json
import os
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import dwrprune
from dwrprune import DwrpruneError
from dwrprune.cli import main


class _RunsCode:
    """Unpickling this creates the marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _one_error_line(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert err.startswith("dwrprune: error:"), err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err and "\x1b[" not in err
    for n in needles:
        assert n in err, (n, err)
    return err


# ---------------------------------------------------------------------------- 1 code in data
def test_crafted_cifar_batch_never_runs_code(cifar10_dir, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    with open(cifar10_dir / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": _RunsCode(marker), b"labels": [0]}, f, protocol=2)
    assert main(["eval", "--checkpoint", "resnet20-fashion-mnist", "--data", "cifar10",
                 "--data-dir", str(cifar10_dir)]) == 2
    _one_error_line(capsys, "test_batch", "refused global")
    assert not marker.exists()


def test_real_cifar_batches_still_load(cifar10_dir):
    ds = dwrprune.create_dataset("cifar10", "test", data_dir=cifar10_dir)
    assert len(ds) == 30 and ds[0][0].shape == (3, 32, 32)


def test_crafted_checkpoint_never_runs_code(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"format": "dwrprune", "spec": _RunsCode(marker)}, f)
    with warnings.catch_warnings(record=True) as caught:  # a user sees warnings on stderr
        warnings.simplefilter("always")
        assert main(["eval", "--checkpoint", str(path)]) == 2
    assert not caught, [str(w.message) for w in caught]
    err = _one_error_line(capsys, str(path))
    assert "weights_only" not in err  # no advice to load it unsafely
    assert not marker.exists()


# ---------------------------------------------------------------------------- 2 malformed specs
def _tiny_ckpt(tmp_path):
    m = dwrprune.create_model("resnet_tiny", num_classes=10, in_channels=1)
    m.dwrprune_spec = dwrprune.make_spec("resnet_tiny", 10, 1, 16)
    small = dwrprune.Shrinker(m).shrink(0.5, 0.5, 1.0)
    return {"format": "dwrprune", "format_version": 1, "spec": small.spec,
            "state_dict": small.model.state_dict(), "meta": {}}


def _layer(spec):
    return next(iter(spec["arch"]["layers"]))


SPEC_MUTATIONS = {
    "missing model": (lambda s: s.pop("model"), "lacks 'model'"),
    "wrong type": (lambda s: s["input"].update(resolution="28"), "input.resolution must be"),
    "unknown top-level key": (lambda s: s.update(payload=1), "unknown keys"),
    "negative resolution": (lambda s: s["input"].update(resolution=-3), "outside"),
    "unknown layer": (lambda s: s["arch"]["layers"].update(nothere={"attrs": {}}),
                      "does not have"),
    "not a layer field": (lambda s: s["arch"]["layers"][_layer(s)]["attrs"].update(
        forward=1), "not a channel attribute"),
    "absurd shape": (lambda s: s["arch"]["layers"][_layer(s)].update(
        shapes={"weight": [10 ** 9, 1, 3, 3]}), "never larger than the original"),
    "negative shape": (lambda s: s["arch"]["layers"][_layer(s)].update(
        shapes={"weight": [-1, 1, 3, 3]}), "whole number in"),
    "unknown block kind": (lambda s: s["arch"]["removed_blocks"].append(
        {"name": "layer1", "kind": "exec"}), "has kind 'exec'"),
    "block names no module": (lambda s: s["arch"]["removed_blocks"].append(
        {"name": "ghost", "kind": "residual"}), "names layer 'ghost'"),
    "unknown model": (lambda s: s["model"].update(name="evil"), "unknown model"),
    "layers not a mapping": (lambda s: s["arch"].update(layers=[1]), "arch.layers a mapping"),
}


@pytest.mark.parametrize("what", sorted(SPEC_MUTATIONS))
def test_malformed_spec_is_one_clear_error(tmp_path, capsys, what):
    mutate, match = SPEC_MUTATIONS[what]
    ckpt = _tiny_ckpt(tmp_path)
    mutate(ckpt["spec"])
    path = tmp_path / "bad.pt"
    torch.save(ckpt, path)
    with pytest.raises(DwrpruneError, match=match):
        dwrprune.load(path)
    assert main(["eval", "--checkpoint", str(path), "--data", "synthetic"]) == 2
    _one_error_line(capsys)


def test_valid_pruned_checkpoint_still_loads(tmp_path):
    ckpt = _tiny_ckpt(tmp_path)
    torch.save(ckpt, tmp_path / "ok.pt")
    m = dwrprune.load(tmp_path / "ok.pt")
    assert m(torch.zeros(1, 1, 16, 16)).shape == (1, 10)


# ---------------------------------------------------------------------------- 3 corrupt image
def test_corrupt_image_is_named(imagefolder_dir, capsys):
    bad = imagefolder_dir / "train" / "dog" / "broken.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(DwrpruneError, match="broken.png"):
        dwrprune.create_dataset("imagefolder", "train", data_dir=imagefolder_dir)
    assert main(["train", "--model", "resnet_tiny", "--data", "imagefolder", "--data-dir",
                 str(imagefolder_dir), "--resolution", "16", "--steps", "1", "--out",
                 str(imagefolder_dir.parent / "out")]) == 2
    _one_error_line(capsys, "broken.png", "cannot be read")


# ---------------------------------------------------------------------------- 4 output paths
def test_out_that_is_a_file(tmp_path, tiny_checkpoint, config_file, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    assert main(["prune", "--checkpoint", str(tiny_checkpoint), "--config", config_file(),
                 "--out", str(f)]) == 2
    _one_error_line(capsys, str(f), "not a folder")
    assert f.read_text() == "x"
    assert main(["train", "--model", "resnet_tiny", "--data", "synthetic", "--steps", "1",
                 "--out", str(f / "sub")]) == 2
    _one_error_line(capsys, "not a writable folder")


def test_force_onto_a_directory_and_existing_export(tmp_path, capsys):
    d = tmp_path / "adir"
    d.mkdir()
    assert main(["shrink", "--width", "0.5", "--out", str(d), "--force"]) == 2
    _one_error_line(capsys, str(d), "is a folder")
    onnx = tmp_path / "m.onnx"
    onnx.write_text("keep")
    assert main(["export", "--onnx", str(onnx)]) == 2
    _one_error_line(capsys, "--force")
    assert onnx.read_text() == "keep"


def test_read_only_destination(tmp_path, monkeypatch):
    from dwrprune.io.files import output_file
    from dwrprune.pipeline import Run

    monkeypatch.setattr(os, "access", lambda *a, **k: False)  # root passes real chmod checks
    with pytest.raises(DwrpruneError, match="not a writable folder"):
        Run(tmp_path / "run").check_writable()
    with pytest.raises(DwrpruneError, match="not a writable folder"):
        output_file(tmp_path / "m.pt")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------- 5 final settings
@pytest.mark.slow
def test_rerun_with_another_budget_restarts_only_the_final_stage(tmp_path, tiny_checkpoint,
                                                                 config_file, capsys):
    run = tmp_path / "run"
    args = ["prune", "--checkpoint", str(tiny_checkpoint), "--config", config_file(),
            "--out", str(run), "--no-progress"]
    assert main(args) == 0
    samples = {p.name: p.stat().st_mtime_ns for p in (run / "models").iterdir()}
    assert main(args + ["--budget", "0.3"]) == 0
    out = capsys.readouterr().out  # another point: the old final model is moved aside
    assert "the chosen point changed" in out and (run / "superseded-1" / "final.json").exists()
    plan, final = (json.loads((run / n).read_text()) for n in ("plan.json", "final.json"))
    assert plan["budget"] == 0.3
    best = plan["solution"]["best"]
    assert [final["point"][k] for k in "dwr"] == [best[k] for k in "dwr"]
    assert final["macs_ratio"] <= 0.3
    settings = json.loads((run / "final" / "settings.json").read_text())
    assert settings["budget"] == 0.3 and settings["point"] == [best[k] for k in "dwr"]
    # the collection was kept: no chain model was rewritten
    assert {p.name: p.stat().st_mtime_ns for p in (run / "models").iterdir()} == samples


def test_final_checkpoint_of_another_plan_is_not_resumed(tmp_path):
    from dwrprune.pipeline import Run

    run = Run(tmp_path / "run")
    run.mkdir()
    run.prepare_final({"point": [1.0, 0.5, 1.0], "budget": 0.5})
    (run.final_dir / "last.pt").write_bytes(b"from the old plan")
    assert run.prepare_final({"point": [1.0, 0.5, 1.0], "budget": 0.5}) is None
    assert (run.final_dir / "last.pt").exists()  # same plan: resume
    assert run.prepare_final({"point": [0.5, 0.7, 1.0], "budget": 0.5}) == "point"
    assert not (run.final_dir / "last.pt").exists()


# ---------------------------------------------------------------------------- 6 lock first
def test_refused_second_process_writes_nothing(tmp_path, tiny_checkpoint, config_file, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("checkpoint: x\nbudget: 0.5\n")
    before = (run / "config.yaml").read_text()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
         str(run / "samples.sqlite.lock")], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"locked"
        assert main(["prune", "--checkpoint", str(tiny_checkpoint), "--config", config_file(),
                     "--out", str(run), "--budget", "0.3"]) == 2
        _one_error_line(capsys, "already working in")
    finally:
        holder.kill()
        holder.wait()
    assert (run / "config.yaml").read_text() == before
    assert not (run / "samples.sqlite").exists()
    assert fcntl  # the lock is an flock, as the holder above takes it


# ---------------------------------------------------------------------------- 7 empty store
def test_empty_store_is_an_error_not_a_new_run(tmp_path, tiny_checkpoint, config_file,
                                              capsys):
    run = tmp_path / "run"
    (run / "models").mkdir(parents=True)
    (run / "samples.sqlite").write_bytes(b"")
    (run / "models" / "d_0.pt").write_bytes(b"precious")
    assert main(["collect", "--checkpoint", str(tiny_checkpoint), "--config", config_file(),
                 "--out", str(run)]) == 2
    _one_error_line(capsys, "samples.sqlite", "empty file")
    assert (run / "models" / "d_0.pt").read_bytes() == b"precious"


# ---------------------------------------------------------------------------- 8 config files
@pytest.mark.parametrize("text,needle", [("", "not a run config"), ("[1, 2]\n", "mapping"),
                                         ("checkpoint: x\nbudget: [1, 2]\n", "budget"),
                                         ("checkpoint: x\nfinal_epochs: many\n",
                                          "final_epochs")])
def test_broken_run_config_names_the_problem(tmp_path, capsys, text, needle):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(text)
    assert main(["fit", "--run", str(run)]) == 2
    _one_error_line(capsys, needle)


# ---------------------------------------------------------------------------- 9 options
@pytest.mark.parametrize("argv,needle", [
    (["export", "--onnx", "{tmp}/m.onnx", "--opset", "3"], "opset 3 is not supported"),
    (["info", "--model", "resnet20", "--resolution", "0"], "--resolution"),
    (["shrink", "--width", "0.5", "--out", "{tmp}/s.pt", "--round-to", "0"], "--round-to"),
    (["shrink", "--width", "0.5", "--out", "{tmp}/s.pt", "--recal-batches", "-3"],
     "--recal-batches"),
    (["eval", "--workers", "-1"], "--workers"),
    (["info", "--model", "resnet20", "--batch-sizes", "1,x"], "--batch-sizes"),
    (["info", "--model", "resnet20", "--threads", "0"], "--threads"),
    (["train", "--model", "resnet_tiny", "--data", "synthetic"], "needs --out"),
])
def test_bad_options_are_refused(tmp_path, capsys, argv, needle):
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    _one_error_line(capsys, needle)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_export_writes_the_opset_asked_for(tmp_path):
    import onnx

    from dwrprune.tasks import export_checkpoint

    out, _ = export_checkpoint(dwrprune.pretrained.path(), tmp_path / "m.onnx", opset=17)
    opsets = {o.domain: o.version for o in onnx.load(str(out)).opset_import}
    assert opsets.get("", opsets.get("ai.onnx")) == 17


# ---------------------------------------------------------------------------- 11 one class
def test_one_class_dataset_is_refused(capsys, tmp_path):
    with pytest.raises(DwrpruneError, match="1 class"):
        dwrprune.create_dataset("synthetic", "train", num_classes=1)


# ---------------------------------------------------------------------------- data vs model
@pytest.mark.parametrize("arch", ["resnet20", "mobilenetv2"])
@pytest.mark.parametrize("mismatch, needle", [
    ({"num_classes": 5, "in_channels": 3}, "10 classes but the model outputs 5"),
    ({"num_classes": 10, "in_channels": 1}, "3 input channels but the model expects 1"),
])
@pytest.mark.parametrize("command", ["eval", "collect", "prune"])
def test_a_checkpoint_that_does_not_fit_the_data_is_one_line(tmp_path, capsys, arch,
                                                             mismatch, needle, command):
    """Another class count or input channel count than the data: named as such, before any
    work, by every command that reads the data (not as a mean of the wrong length)."""
    from dwrprune.checkpoint import save_model

    c = mismatch["in_channels"]
    model = dwrprune.create_model(arch, **mismatch)
    spec = {"model": {"name": arch, **mismatch},
            "input": {"resolution": 16, "mean": [0.5] * c, "std": [0.25] * c}}
    save_model(tmp_path / "m.pt", model, spec)
    args = [command, "--checkpoint", str(tmp_path / "m.pt"), "--data", "synthetic"]
    if command != "eval":
        args += ["--preset", "quick", "--out", str(tmp_path / "run"), "--no-progress"]
    if command == "prune":
        args += ["--budget", "0.5"]
    assert main(args) == 2
    _one_error_line(capsys, needle)
    assert not (tmp_path / "run" / "samples.sqlite").exists()


# ---------------------------------------------------------------------------- mid-epoch resume
def test_killed_epoch_resumes_mid_epoch_with_the_same_result(tmp_path, monkeypatch):
    import dwrprune.training.engine as eng

    loader = dwrprune.make_loader(dwrprune.create_dataset("synthetic", "train"), 32,
                                  shuffle=True, seed=0)
    cfg = dwrprune.TrainConfig(epochs=1, lr=0.05)
    torch.manual_seed(0)
    base = dwrprune.create_model("resnet_tiny", num_classes=10, in_channels=3)
    ref = copy.deepcopy(base)
    eng.train(ref, loader, cfg, progress=False, log=False)  # uninterrupted

    real, saves = eng.save_torch, []

    def crash_after_second_save(path, payload):
        real(path, payload)
        saves.append(payload.get("partial"))
        if len(saves) == 2:
            raise KeyboardInterrupt  # killed mid-epoch, right after a checkpoint

    monkeypatch.setattr(eng, "save_torch", crash_after_second_save)
    run = copy.deepcopy(base)
    with pytest.raises(KeyboardInterrupt):
        eng.train(run, loader, cfg, checkpoint_dir=tmp_path, progress=False, log=False,
                  checkpoint_every=3)
    assert saves[-1]["batch"] == 6 and saves[-1]["epoch"] == 0  # inside the only epoch
    monkeypatch.setattr(eng, "save_torch", real)
    resumed = copy.deepcopy(base)
    eng.train(resumed, loader, cfg, checkpoint_dir=tmp_path, progress=False, log=False,
              checkpoint_every=3)
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), k


def test_torch_error_text_is_quoted_clean():
    from dwrprune.errors import quote_error

    e = RuntimeError("\x1b[1mWeights only load failed.\x1b[0m Re-running `torch.load` with "
                     "`weights_only` set to `False` will likely succeed\nPlease file an issue"
                     " WeightsUnpickler error: Unsupported global: os.system\n\nCheck the "
                     "documentation")
    text = quote_error(e)
    assert text == "refused by weights-only unpickling: Unsupported global: os.system"
    assert np.all([c != "\x1b" for c in text])
