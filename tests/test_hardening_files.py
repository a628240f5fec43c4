"""Hardening, round two: one test per kind of fault the probes found.  Every file dwrprune
reads is checked when it is read; limits come before allocation; a run folder holds one run;
the Python API answers wrong types with DwrpruneError; every refusal comes before a write."""

import errno
import json
import os
import pickle
import shutil
import time

import numpy as np
import pytest
import torch
from conftest import write_idx
from torch import nn

import dwrprune
from dwrprune import DwrpruneError
from dwrprune.cli import main, system_failure


def _one_error_line(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert err.startswith("dwrprune: error:"), err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)
    return err


# ---------------------------------------------------------------------------- YAML
def test_yaml_duplicate_keys_and_alias_bombs_are_refused(tmp_path, capsys):
    dup = tmp_path / "dup.yaml"
    dup.write_text("budget: 0.5\nbudget: 0.3\n")
    assert main(["prune", "--config", str(dup), "--out", str(tmp_path / "r")]) == 2
    _one_error_line(capsys, "appears twice")
    bomb = tmp_path / "bomb.yaml"  # a few hundred bytes that would expand to 10^9 items
    bomb.write_text("a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi")))
    t0 = time.perf_counter()
    assert main(["prune", "--config", str(bomb), "--out", str(tmp_path / "r")]) == 2
    _one_error_line(capsys, "aliases")
    assert time.perf_counter() - t0 < 10
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("path", ["/dev/zero", "big"])
def test_config_files_are_small_regular_files(tmp_path, capsys, path):
    if path == "big":
        path = tmp_path / "big.yaml"
        path.write_text("# " + "x" * 1_100_000 + "\n")
    assert main(["prune", "--config", str(path), "--out", str(tmp_path / "r")]) == 2
    _one_error_line(capsys)


# ---------------------------------------------------------------------------- checkpoints
def _mutated(tmp_path, change) -> str:
    obj = torch.load(dwrprune.pretrained.path(), weights_only=True)
    obj = {**obj, "spec": json.loads(json.dumps(obj["spec"])),
           "state_dict": dict(obj["state_dict"])}
    change(obj)
    path = tmp_path / "m.pt"
    torch.save(obj, path)
    return str(path)


@pytest.mark.parametrize("change,needle", [
    (lambda o: o.__setitem__("format_version", "1"), "format_version"),
    (lambda o: o["state_dict"].__setitem__("x", [1, 2]), "state_dict must map"),
    (lambda o: o["spec"]["model"].__setitem__("num_classes", 1_000_000), "shape mismatch"),
    (lambda o: o["spec"].__setitem__("arch", {"removed_blocks": [
        {"name": "", "kind": "residual"}]}), "empty name"),
    (lambda o: o["spec"].__setitem__("arch", {"removed_blocks": [
        {"name": "layer1.0", "kind": "transition", "shortcut": ""}]}), "empty name"),
], ids=["version-str", "not-tensors", "million-classes", "root-block", "root-shortcut"])
def test_damaged_checkpoints_are_one_error_before_any_build(tmp_path, change, needle):
    path = _mutated(tmp_path, change)
    with pytest.raises(DwrpruneError, match=needle):
        dwrprune.load(path)


def test_api_types_are_checked(tmp_path):
    path = dwrprune.pretrained.path()
    with pytest.raises(DwrpruneError, match="nn.Module"):
        dwrprune.load(path, model="resnet20")
    model = dwrprune.load(path)
    with pytest.raises(DwrpruneError, match="unknown keys"):
        dwrprune.save_model(tmp_path / "x.pt", model, {"not": "a spec"})
    assert not (tmp_path / "x.pt").exists()
    shr = dwrprune.Shrinker(model)
    with pytest.raises(DwrpruneError, match="must be a number"):
        shr.macs("0.5", 1, 1)
    with pytest.raises(DwrpruneError, match="no parameters"):
        dwrprune.Shrinker(nn.Sequential(nn.ReLU()))
    with pytest.raises(DwrpruneError, match="meta device"):
        dwrprune.Shrinker(dwrprune.create_model("resnet_tiny").to("meta"))
    broken = dwrprune.load(path)
    with torch.no_grad():
        broken.conv1.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(DwrpruneError, match="non-finite"):
        dwrprune.Shrinker(broken)


def test_the_model_keeps_its_mode():
    model = dwrprune.load(dwrprune.pretrained.path()).train()
    dwrprune.Shrinker(model)
    assert model.training


# ---------------------------------------------------------------------------- data files
def test_idx_files_with_impossible_headers_or_labels(tmp_path):
    from dwrprune.training.data import read_idx

    bad = tmp_path / "bad-idx"
    bad.write_bytes(bytes([0, 0, 8, 255]) + b"\0" * 16)
    with pytest.raises(DwrpruneError, match="255 dimensions"):
        read_idx(bad)
    root = tmp_path / "fm"
    root.mkdir()
    for prefix, n in (("train", 20), ("t10k", 10)):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", np.zeros((n, 28, 28)))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.full(n, 12))  # 12 > 9
    with pytest.raises(DwrpruneError, match="labels must be in"):
        dwrprune.create_dataset("fashion-mnist", "test", data_dir=root)


@pytest.mark.parametrize("images,labels,needle", [
    (np.zeros((12, 3072), np.uint8), list(range(10)), "do not match"),
    (np.zeros((10, 3000), np.uint8), list(range(10)), "do not match"),
    (np.zeros((10, 3072), np.uint8), [50] * 10, "labels must be in"),
    (np.zeros((10, 3072), np.uint8), ["cat"] * 10, "whole numbers"),
])
def test_cifar_batches_that_do_not_add_up(tmp_path, images, labels, needle):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(root / name, "wb") as f:
            pickle.dump({b"data": images, b"labels": labels}, f)
    with pytest.raises(DwrpruneError, match=needle):
        dwrprune.create_dataset("cifar10", "test", data_dir=tmp_path)


def test_image_folders_with_other_classes_loops_or_truncated_files(imagefolder_dir):
    test = imagefolder_dir / "test"
    shutil.copytree(imagefolder_dir / "val", test)
    (test / "eel").rename(test / "fish")
    with pytest.raises(DwrpruneError, match="different classes"):
        dwrprune.create_dataset("imagefolder", "train", data_dir=imagefolder_dir)
    shutil.rmtree(test)
    os.symlink(imagefolder_dir / "train", imagefolder_dir / "train" / "cat" / "again")
    with pytest.raises(DwrpruneError, match="loop"):
        dwrprune.create_dataset("imagefolder", "train", data_dir=imagefolder_dir)
    (imagefolder_dir / "train" / "cat" / "again").unlink()
    png = imagefolder_dir / "train" / "dog" / "0.png"
    png.write_bytes(png.read_bytes()[:200])  # cut short: the header still reads
    with pytest.raises(DwrpruneError, match="cannot be read"):
        dwrprune.create_dataset("imagefolder", "train", data_dir=imagefolder_dir)


class _Source:
    """A user's DataSource whose batches are wrong in one way."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def loader(self, split, resolution, *, shuffle=False, subset=None, seed=0, augment=None):
        from torch.utils.data import DataLoader, TensorDataset

        return DataLoader(TensorDataset(self.x, self.y), batch_size=4)


@pytest.mark.parametrize("x,y,needle", [
    (torch.zeros(4, 3, 20, 20), torch.zeros(4, dtype=torch.long), "shape"),
    (torch.zeros(4, 3, 16, 16, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), "float"),
    (torch.zeros(4, 3, 16, 16), torch.full((4,), 99), "labels 99..99"),
    (torch.zeros(4, 3, 16, 16), torch.zeros(4), "whole-number"),
])
def test_a_user_data_source_gets_its_first_batch_checked(tiny_checkpoint, x, y, needle):
    from dwrprune.io.spec import ModelSpec
    from dwrprune.pipeline.data import check_source

    spec = ModelSpec.from_dict(dwrprune.load(tiny_checkpoint).dwrprune_spec)
    with pytest.raises(DwrpruneError, match=needle):
        check_source(_Source(x, y), spec)


class _TrainSplitWrong(_Source):
    """Right validation batches, training batches as raw uint8 images."""

    def loader(self, split, resolution, *, shuffle=False, subset=None, seed=0, augment=None):
        from torch.utils.data import DataLoader, TensorDataset

        x = self.x if split == "val" else (self.x * 255).to(torch.uint8)
        return DataLoader(TensorDataset(x, self.y), batch_size=4)


def test_a_user_training_split_is_checked_before_any_work(tiny_checkpoint):
    from dwrprune.io.spec import ModelSpec
    from dwrprune.pipeline.data import check_source

    spec = ModelSpec.from_dict(dwrprune.load(tiny_checkpoint).dwrprune_spec)
    with pytest.raises(DwrpruneError, match="training loader yields torch.uint8 images"):
        check_source(_TrainSplitWrong(torch.zeros(4, 3, 16, 16),
                                      torch.zeros(4, dtype=torch.long)), spec)


# ---------------------------------------------------------------------------- limits
@pytest.mark.parametrize("argv,needle", [
    (["info", "--resolution", "30000"], "must be <= 1024"),
    (["info", "--threads", "100000"], "must be <= 256"),
    (["shrink", "--threads", "100000", "--out", "x.pt"], "must be <= 256"),
])
def test_sizes_have_upper_bounds(capsys, argv, needle):
    assert main(argv) == 2
    _one_error_line(capsys, needle)


def test_timing_a_huge_batch_is_refused_before_allocating():
    from dwrprune.cost import measure_latency

    model = dwrprune.create_model("resnet_tiny")
    with pytest.raises(DwrpruneError, match="too large"):
        measure_latency(model, 4000, batch_size=64)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_refused_whatever_the_budget():
    with pytest.raises(DwrpruneError, match="no CUDA GPU"):
        dwrprune.resolve_config("quick", budget=0.5, device="cuda")


# ---------------------------------------------------------------------------- run folders
def test_refusals_come_before_any_write(tmp_path, capsys, tiny_checkpoint):
    assert main(["prune", "--checkpoint", str(tiny_checkpoint), "--data", "synthetic",
                 "--ray-address", "127.0.0.1:1", "--out", str(tmp_path / "r")]) == 2
    _one_error_line(capsys, "needs --executor ray")
    assert not (tmp_path / "r").exists()
    out = tmp_path / "t"
    args = ["train", "--model", "resnet_tiny", "--data", "synthetic", "--steps", "1",
            "--out", str(out), "--no-progress"]
    assert main(args) == 0
    before = (out / "config.json").read_text()
    assert main(args[:-3] + ["--lr", "0.5", "--out", str(out)]) == 2
    _one_error_line(capsys, "different settings")
    assert (out / "config.json").read_text() == before


def test_a_run_folder_belongs_to_one_model(tmp_path, tiny_checkpoint, tiny_options):
    from dwrprune.pipeline import DatasetSource, Run, open_run, resolve_config, start_run

    cfg = resolve_config(**tiny_options)
    data = DatasetSource("synthetic", batch_size=32)
    model = dwrprune.load(tiny_checkpoint)
    run = start_run(model, data, cfg, tmp_path / "run", str(tiny_checkpoint))
    body = (run.path / "config.yaml").read_text()
    assert f"checkpoint: {tiny_checkpoint.resolve()}" in body  # absolute: any cwd reads it
    other = dwrprune.load(tiny_checkpoint)
    with torch.no_grad():
        other.fc.bias.add_(1.0)
    with pytest.raises(DwrpruneError, match="started from a different model"):
        start_run(other, data, cfg, tmp_path / "run", str(tiny_checkpoint))
    assert (run.path / "config.yaml").read_text() == body
    dwrprune.save_model(tmp_path / "other.pt", other, other.dwrprune_spec)
    (run.path / "config.yaml").write_text(body.replace(str(tiny_checkpoint.resolve()),
                                                       str(tmp_path / "other.pt")))
    with pytest.raises(DwrpruneError, match="started from a different model"):
        open_run(run.path)
    assert Run(run.path).path == run.path


def test_a_new_plan_moves_the_old_final_model_aside(tmp_path):
    from dwrprune.pipeline import Run
    from dwrprune.search.solver import Candidate, Solution

    run = Run(tmp_path / "run")
    run.mkdir()
    (run.final_dir).mkdir()
    (run.final_dir / "settings.json").write_text(json.dumps({"point": [1.0, 0.7, 1.0]}))
    (run.final_dir / "model.pt").write_bytes(b"x")
    (run.path / "final.json").write_text("{}")
    cand = Candidate(0.5, 0.8, 1.0, 3, 28, 1000, 0.5, 0.9)
    sol = Solution(budget=0.5, base_macs=2000, continuous=None, best=cand, runners_up=[])
    dest = run.save_plan(0.5, sol, {})
    assert dest == run.path / "superseded-1"
    assert (dest / "final" / "model.pt").exists() and (dest / "final.json").exists()
    assert not run.final_dir.exists()
    assert run.save_plan(0.5, sol, {}) is None  # nothing left to move


@pytest.mark.parametrize("name,text,needle", [
    ("predictor.json", "[]", "not a valid fitted predictor"),
    ("predictor.json", "{\"predictor\": 3}", "not a valid fitted predictor"),
    ("predictor.json", "", "not a readable fitted predictor"),
    ("block_order.json", "{\"order\": 5}", "not a valid block ranking"),
    ("plan.json", "{\"solution\": []}", "not a valid plan"),
    ("final.json", "[1]", "not a valid final figures"),
])
def test_damaged_run_files_name_the_file_and_the_stage(tmp_path, name, text, needle):
    from dwrprune.pipeline import Run

    run = Run(tmp_path)
    (tmp_path / name).write_text(text)
    read = {"predictor.json": run.predictor, "block_order.json": run.block_ranking,
            "plan.json": run.solution, "final.json": run.final}[name]
    with pytest.raises(DwrpruneError, match=needle) as e:
        result = read()
        if name == "final.json":  # a list is refused like any other wrong shape
            assert isinstance(result, dict)
    assert name in str(e.value) and "stage" in str(e.value)


def test_a_store_with_the_wrong_columns(tmp_path):
    import sqlite3

    from dwrprune.io.store import SampleStore

    db = sqlite3.connect(tmp_path / "samples.sqlite")
    db.executescript("CREATE TABLE meta (key TEXT, value TEXT); CREATE TABLE samples (x INT);")
    db.close()
    with pytest.raises(DwrpruneError, match="lacks columns"):
        SampleStore(tmp_path / "samples.sqlite")


def test_fit_says_which_samples_are_missing(tmp_path, capsys):
    from dwrprune.io.store import Sample, SampleStore
    from dwrprune.pipeline import fit_samples, resolve_config

    store = SampleStore(tmp_path / "samples.sqlite")
    store.set_meta("planned", ["orig", "d/0", "d/1", "w/0", "w/1", "r/0", "r/1", "mix/0"])
    for i, (key, d, w, r) in enumerate([("orig", 1, 1, 1), ("d/0", 0.5, 1, 1),
                                        ("w/0", 1, 0.75, 1), ("w/1", 1, 0.5, 1),
                                        ("r/0", 1, 1, 0.75), ("d/1", 0.25, 1, 1)]):
        store.add(Sample(key, "original" if key == "orig" else "chain", d, w, r, 16, 100, 10,
                         0.9 - 0.05 * i, 0.3, 0, 0, 1.0))
    fit_samples(store, resolve_config(families=["separable"], max_degree=1))
    assert "2 of the 8 planned samples are missing (r/1, mix/0)" in capsys.readouterr().out


# ---------------------------------------------------------------------------- the machine
@pytest.mark.slow
def test_a_full_disk_is_one_line(tmp_path, capsys, monkeypatch):
    import dwrprune.tasks as tasks

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "t.pt"))

    monkeypatch.setattr(tasks, "save_model", full)
    assert main(["shrink", "--width", "0.5", "--out", str(tmp_path / "t.pt")]) == 2
    _one_error_line(capsys, "No space left on device", "t.pt")
    assert system_failure(ValueError("a bug")) is None


@pytest.mark.slow
def test_export_makes_missing_folders_and_keeps_stderr_clean(tmp_path, capsys):
    pytest.importorskip("onnxscript")
    out = tmp_path / "a" / "b" / "m.onnx"
    assert main(["export", "--onnx", str(out), "--opset", "7"]) == 0
    captured = capsys.readouterr()
    assert out.exists() and captured.err == ""


def test_an_untrained_original_is_one_error_not_a_failed_fit(tmp_path):
    from dwrprune.io.store import Sample, SampleStore
    from dwrprune.pipeline import fit_samples, resolve_config

    store = SampleStore(tmp_path / "samples.sqlite")
    for key, kind, d, w, r, acc in [("orig", "original", 1, 1, 1, 0.0),
                                    ("d/0", "chain", 0.5, 1, 1, 1.0),
                                    ("w/0", "chain", 1, 0.5, 1, 1.0)]:
        store.add(Sample(key, kind, d, w, r, 16, 100, 10, acc, 0.3, 0, 0, 1.0))
    with pytest.raises(DwrpruneError, match="scores 0.00% on the validation split"):
        fit_samples(store, resolve_config(families=["pchip"]))


@pytest.mark.slow
def test_export_onnx_from_python_carries_the_input_contract(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    model = dwrprune.load(dwrprune.pretrained.path()).train()
    small = dwrprune.Shrinker(model).shrink(0.6, 0.7, 0.8)
    files = dwrprune.export_onnx(small.model.train(), tmp_path / "m.onnx")  # checked in ORT
    assert files[0] == tmp_path / "m.onnx" and small.model.training
    meta = {p.key: p.value for p in onnx.load(str(files[0])).metadata_props}
    assert meta["dwrprune.input_size"] == str(small.spec["input"]["resolution"])
    assert meta["dwrprune.in_channels"] == "1"
    assert json.loads(meta["dwrprune.mean"]) == small.spec["input"]["mean"]
    with pytest.raises(DwrpruneError, match="needs resolution"):
        dwrprune.export_onnx(nn.Sequential(nn.Conv2d(3, 2, 3)), tmp_path / "x.onnx")
