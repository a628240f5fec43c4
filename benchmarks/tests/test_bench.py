import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import dwrbench
import dwrprune
from dwrprune import PipelineConfig, TrainConfig, load
from dwrprune.pipeline import DatasetSource
from dwrprune.pipeline.executors import LocalExecutor, RayExecutor

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_compare_quick_mode_runs_every_method_and_resumes(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "compare.py"), "run", "--quick",
           "--out", str(tmp_path), "--no-progress"]
    first = subprocess.run(cmd, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    methods = {r["method"] for r in rows}
    assert methods == {"3d", "width-only", "depth-only", "resolution-only", "torch-pruning",
                       "autobot"}
    assert len(rows) == 12  # 6 methods x 1 budget x 2 seeds
    for r in rows:
        assert r["status"] in ("ok", "infeasible")
        if r["status"] == "ok":
            assert float(r["macs"]) <= 0.5 * float(r["original_macs"])
            assert r["torch"] and r["cpu"] and r["threads"]
    assert (tmp_path / "compare.png").exists() and "± " in (tmp_path / "table.md").read_text()
    again = subprocess.run(cmd, capture_output=True, text=True)  # resumes: nothing to redo
    assert again.returncode == 0
    assert len(list(csv.DictReader(open(tmp_path / "results.csv")))) == 12
    # 3d's choice with today's defaults on the same collections, beside the rows: the same
    choices = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compare.py"),
                              "choices", "--out", str(tmp_path), "--checkpoint",
                              str(tmp_path / "tiny" / "model.pt")],
                             capture_output=True, text=True)
    assert choices.returncode == 0, choices.stderr[-2000:]
    lines = choices.stdout.strip().splitlines()
    assert len(lines) == 2 and all(ln.endswith("| same") for ln in lines), lines
    none = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compare.py"), "choices",
                           "--out", str(tmp_path / "tiny")], capture_output=True, text=True)
    assert none.returncode == 2 and none.stderr.startswith("compare.py: error: no collections")


def test_resume_with_other_recipe_is_refused(tmp_path):
    import pytest

    import dwrprune
    from dwrbench.bench import run_benchmark
    from dwrprune.pipeline import DatasetSource, resolve_config

    model = dwrprune.create_model("resnet_tiny", num_classes=10, in_channels=3)
    model.dwrprune_spec = dwrprune.io.spec.make_spec("resnet_tiny", 10, 3, 16)
    data = DatasetSource("synthetic", batch_size=32)
    pipe = resolve_config(None, data="synthetic")
    run_benchmark(model, data, ["width-only"], [0.5], [0], dwrprune.TrainConfig(steps=1), pipe,
                  tmp_path, progress=False, latency_repeats=2)
    with pytest.raises(dwrprune.DwrpruneError, match="differs in: recipe"):
        run_benchmark(model, data, ["width-only"], [0.5], [1], dwrprune.TrainConfig(steps=2),
                      pipe, tmp_path, progress=False, latency_repeats=2)


def test_latency_pass_fills_rows_and_keeps_rows_appended_meanwhile(tmp_path, monkeypatch):
    import dwrbench.bench as bench
    import dwrprune
    from dwrbench.bench import append_row, model_path, time_result_models
    from dwrprune.checkpoint import save_model
    from dwrprune.io.spec import make_spec

    model = dwrprune.create_model("resnet_tiny", num_classes=10, in_channels=3)
    model.dwrprune_spec = make_spec("resnet_tiny", 10, 3, 16)
    save_model(model_path(tmp_path, "width-only", 0.5, 0), model, model.dwrprune_spec)
    csv_path = tmp_path / "results.csv"
    append_row(csv_path, {"method": "width-only", "budget": 0.5, "seed": 0, "status": "ok"})
    append_row(csv_path, {"method": "depth-only", "budget": 0.5, "seed": 0,
                          "status": "infeasible"})
    real = bench.measure_latencies

    def measure_while_another_process_appends(*a, **k):  # a parallel benchmark's new row
        if not getattr(measure_while_another_process_appends, "done", False):
            measure_while_another_process_appends.done = True
            append_row(csv_path, {"method": "3d", "budget": 0.5, "seed": 0, "status": "ok"})
        return real(*a, **k)

    monkeypatch.setattr(bench, "measure_latencies", measure_while_another_process_appends)
    assert time_result_models(tmp_path, model, repeats=2) == 1
    monkeypatch.setattr(bench, "measure_latencies", real)
    rows = list(csv.DictReader(open(csv_path)))
    assert [r["method"] for r in rows] == ["width-only", "depth-only", "3d"]
    assert float(rows[0]["latency_b1_ms"]) > 0
    for b in (1, 64):  # timed beside the original: ms scaled to the pass's original time
        ratio = float(rows[0][f"latency_b{b}_ratio"])
        orig = float(rows[0][f"original_latency_b{b}_ms"])
        assert float(rows[0][f"latency_b{b}_ms"]) == pytest.approx(ratio * orig)
    assert float(rows[0]["original_latency_b64_ms"]) > 0 and rows[1]["latency_b1_ms"] == ""
    assert time_result_models(tmp_path, model, repeats=2) == 0  # 3d has no model file here
    assert time_result_models(tmp_path, model, repeats=2, remeasure=True) == 1
    settings = tmp_path / "bench_settings.json"  # filled from another original: refused
    settings.write_text(json.dumps({"model": "0" * 64}))
    with pytest.raises(dwrprune.DwrpruneError, match="another model"):
        time_result_models(tmp_path, model, repeats=2, remeasure=True)


@pytest.mark.slow
def test_a_benchmark_folder_names_the_bundled_original_it_was_filled_from(tmp_path):
    import dwrprune
    from dwrbench.bench import bundled_original
    from dwrprune.pipeline import model_fingerprint

    settings = tmp_path / "bench_settings.json"
    assert bundled_original(tmp_path) is None  # no record
    for name in dwrprune.pretrained.available():
        fp = model_fingerprint(dwrprune.load(dwrprune.pretrained.path(name)))
        settings.write_text(json.dumps({"model": fp}))
        assert bundled_original(tmp_path) == name
    settings.write_text(json.dumps({"model": "0" * 64}))  # a user's own model
    assert bundled_original(tmp_path) is None


@pytest.mark.slow
def test_compare_at_equal_measured_latency(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "compare.py"), "run", "--quick",
           "--latency-budgets", "0.97", "--methods", "width-only,3d,3d-latency",
           "--out", str(tmp_path), "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert {x["method"] for x in rows} == {"width-only", "3d", "3d-latency"}
    assert all(x["budget_kind"] == "latency-cpu-b1-t1" for x in rows)
    assert all(x["status"] in ("ok", "infeasible") for x in rows)
    assert "measured latency" in r.stdout  # the budget in ms, and the original's
    assert re.search(r"0\.97 x [\d.]+ ms = [\d.]+ ms", r.stdout)
    assert (tmp_path / "compare.png").stat().st_size > 0  # accuracy vs measured latency


@pytest.mark.slow
def test_compare_within_an_accuracy_drop(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "compare.py"), "run", "--quick",
           "--max-drops", "20", "--out", str(tmp_path), "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert {x["method"] for x in rows} == {"3d-drop", "width-only-drop"}
    assert all(x["budget_kind"] == "drop-cpu-b1-t1" for x in rows)
    width = [x for x in rows if x["method"] == "width-only-drop" and x["status"] == "ok"]
    assert width and all("d=1.000" in x["note"] and "r=1.000" in x["note"]
                         for x in width)  # width only: every block, full resolution
    assert "test drop (points)" in (tmp_path / "table.md").read_text()
    from dwrprune.io.store import SampleStore  # the drop is counted from the reference

    for seed in (0, 1):
        ref = SampleStore(tmp_path / "3d" / f"seed{seed}" / "samples.sqlite").get("ref")
        assert ref is not None and ref.kind == "reference"
    assert "counted from each seed's reference sample" in (tmp_path / "table.md").read_text()
    mixed = subprocess.run(cmd[:4] + ["--latency-budgets", "0.5"] + cmd[4:],
                           capture_output=True, text=True)
    assert mixed.returncode == 2 and "not both" in mixed.stderr


def test_the_same_pruned_model_gets_the_same_row_whatever_ran_before(tmp_path):
    """Common random numbers: a method's row depends on the model it chose and the seed,
    not on the random numbers its own choosing used (3d's choice equal to width-only's must
    tie)."""
    import torch

    import dwrprune
    from dwrbench.bench import BenchJob
    from dwrbench.methods import BenchContext, OneAxis
    from dwrprune.pipeline import DatasetSource, resolve_config

    class Busy(OneAxis):  # chooses like width-only, after using random numbers
        def prune(self, model, budget, seed, ctx):
            torch.rand(12345)
            return super().prune(model, budget, seed, ctx)

    model = dwrprune.create_model("resnet_tiny", num_classes=10, in_channels=3)
    model.dwrprune_spec = dwrprune.io.spec.make_spec("resnet_tiny", 10, 3, 16)
    data = DatasetSource("synthetic", batch_size=32)
    ctx = BenchContext(data, tmp_path, resolve_config(None, data="synthetic"), recal_batches=3)
    job = BenchJob(model, ctx, dwrprune.TrainConfig(steps=3), None, {"original_macs": 1},
                   methods={"width-only": OneAxis("w"), "busy": Busy("w")})
    a, b = job("width-only", 0.5, 0)[0], job("busy", 0.5, 0)[0]
    for key in ("test_acc_pruned", "test_acc", "val_acc", "val_loss"):
        assert a[key] == b[key]


@pytest.fixture
def compare_main(monkeypatch):
    """``benchmarks/compare.py``'s main with the given arguments, in this process."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import compare

    def main(*argv):
        monkeypatch.setattr(sys, "argv", ["compare.py", *map(str, argv)])
        compare.main()

    return main


def test_render_before_latency_and_without_results(tmp_path, compare_main, capsys):
    """A CSV whose rows are not timed yet renders (rows mid-run are committed so), and a
    folder without one is one clear line, exit 2 (the script's main, in this process)."""
    with pytest.raises(SystemExit) as missing:
        compare_main("render", "--out", tmp_path / "none")
    err = capsys.readouterr().err.strip()
    assert missing.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith("compare.py: error: no results.csv in")
    fields = ["method", "budget", "seed", "status", "macs_ratio", "test_acc", "test_acc_pruned",
              "prune_seconds", "collection_seconds", "original_test_acc", "latency_b1_ms",
              "latency_b64_ms", "original_latency_b1_ms", "original_latency_b64_ms"]
    with open(tmp_path / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        w.writerow({"method": "width-only", "budget": 0.5, "seed": 0, "status": "ok",
                    "macs_ratio": 0.48, "test_acc": 0.93, "test_acc_pruned": 0.9,
                    "prune_seconds": 1, "collection_seconds": 0, "original_test_acc": 0.94})
    compare_main("render", "--out", tmp_path)
    out = capsys.readouterr().out
    assert "| 0.5 | width-only | 1 | 0.480 |" in out
    assert "Unpruned: test accuracy 94.00% (latency not measured yet)." in out
    assert (tmp_path / "compare.png").is_file() and (tmp_path / "table.md").is_file()


@pytest.mark.parametrize("text, says", [(None, "cannot read config"),
                                         ("finetune_steps: [1", "is not valid YAML"),
                                         ("max_rank: 9", "max_rank must be in [1, 6]")])
def test_a_bad_pipeline_config_is_one_line_before_any_work(tmp_path, compare_main, capsys,
                                                          text, says):
    cfg = tmp_path / "collect.yaml"
    if text is not None:
        cfg.write_text(text)
    with pytest.raises(SystemExit) as bad:
        compare_main("run", "--quick", "--config", cfg, "--out", tmp_path / "out",
                     "--no-progress")
    err = capsys.readouterr().err.strip()
    assert bad.value.code == 2 and len(err.splitlines()) == 1 and says in err
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written


@pytest.mark.slow
def test_an_identical_model_reuses_the_finished_fine_tune(tmp_path):
    """Two budgets that round to the same pruned model (the case of 3d choosing width-only):
    the second row takes the first's fine-tuned figures and model file instead of
    fine-tuning the same model again, and says so; a resumed run reuses across processes."""
    import dwrprune
    from dwrbench.bench import model_path, run_benchmark
    from dwrprune.pipeline import DatasetSource, resolve_config

    model = dwrprune.create_model("resnet_tiny", num_classes=10, in_channels=3)
    model.dwrprune_spec = dwrprune.io.spec.make_spec("resnet_tiny", 10, 3, 16)
    data = DatasetSource("synthetic", batch_size=32)
    pipe = resolve_config(None, data="synthetic", recal_batches=2)
    args = (dwrprune.TrainConfig(steps=2), pipe, tmp_path)
    run_benchmark(model, data, ["width-only"], [0.5], [0], *args, progress=False,
                  latency_repeats=2)
    run_benchmark(model, data, ["width-only"], [0.5001, 0.3], [0], *args, progress=False,
                  latency_repeats=2)
    rows = {float(r["budget"]): r for r in csv.DictReader(open(tmp_path / "results.csv"))}
    first, same, other = rows[0.5], rows[0.5001], rows[0.3]
    assert first["model_key"] == same["model_key"] != other["model_key"]
    assert "its fine-tune reused" in same["note"] and "width-only b0.5" in same["note"]
    assert same["test_acc"] == first["test_acc"] and same["val_acc"] == first["val_acc"]
    assert same["finetune_seconds"] == "" and first["finetune_seconds"] != ""
    assert "reused" not in other["note"] and other["finetune_seconds"] != ""
    assert model_path(tmp_path, "width-only", 0.5001, 0).read_bytes() == \
        model_path(tmp_path, "width-only", 0.5, 0).read_bytes()
    assert same["latency_b1_ms"] != ""  # timed like any row, from the copied file


def test_model_key_tells_apart_the_same_widths_of_other_channels():
    import copy

    import torch

    import dwrprune
    from dwrbench.bench import model_key

    model = dwrprune.create_model("resnet_tiny", num_classes=10, in_channels=3)
    model.dwrprune_spec = dwrprune.io.spec.make_spec("resnet_tiny", 10, 3, 16)
    twin = copy.deepcopy(model)
    assert model_key(twin) == model_key(model)
    twin.dwrprune_spec = {**model.dwrprune_spec, "arch": {"depth_criterion": "loss"},
                          "provenance": {"depth_criterion": None}}  # how it was chosen
    assert model_key(twin) == model_key(model)
    with torch.no_grad():
        next(twin.parameters())[0].mul_(-1)  # same architecture, other weights
    assert model_key(twin) != model_key(model)


def base_note(row: dict) -> str:
    return row["note"].split("; the same model as ")[0]


@pytest.mark.slow
def test_benchmark_on_ray_matches_local(tmp_path, tiny_checkpoint, ray_cluster, tiny_options):
    import csv

    from dwrbench.bench import run_benchmark


    model = load(tiny_checkpoint)
    data = DatasetSource("synthetic", batch_size=32)
    pipe = PipelineConfig.from_dict({**tiny_options, "holdout_points": [], "depth_criterion":
                                     "weight_norm"})
    rows = {}
    ray_ex = RayExecutor(ray_cluster, py_modules=[dwrbench])  # dwrbench is not installed
    for name, ex in (("local", LocalExecutor()), ("ray", ray_ex)):
        try:
            run_benchmark(model, data, ["3d", "width-only"], [0.5], [0], TrainConfig(steps=2),
                          pipe, tmp_path / name, progress=False, latency_repeats=2,
                          executor=ex)
        finally:
            ex.close()
        rows[name] = {r["method"]: r for r in csv.DictReader(open(tmp_path / name /
                                                                  "results.csv"))}
        assert (tmp_path / name / "3d/seed0/samples.sqlite").exists()
    for method in ("3d", "width-only"):
        a, b = rows["local"][method], rows["ray"][method]
        assert a["status"] == b["status"] == "ok"
        # run one after the other, local reuses 3d's fine-tune when both chose the same
        # model; Ray runs them at once, so it fine-tunes twice: the same figures either way
        assert (base_note(a), a["macs"], a["model_key"]) == (base_note(b), b["macs"],
                                                             b["model_key"])
        assert abs(float(a["test_acc"]) - float(b["test_acc"])) < 1e-6
        assert float(b["latency_b1_ms"]) > 0 and float(b["original_latency_b1_ms"]) > 0
        assert (tmp_path / "ray" / "models" / f"{method}_b0.5_s0.pt").exists()



@pytest.mark.slow
def test_seeds_can_share_one_collection(tmp_path, tiny_checkpoint, tiny_options):
    """--collection-seed 0: seed 1's 3d row plans from seed 0's collection (no second one
    is collected), chooses the same point and says where its choice came from."""
    from dwrbench.bench import run_benchmark

    model = load(tiny_checkpoint)
    data = DatasetSource("synthetic", batch_size=32)
    pipe = PipelineConfig.from_dict({**tiny_options, "holdout_points": [], "depth_criterion":
                                     "weight_norm"})
    run_benchmark(model, data, ["3d"], [0.5], [0, 1], TrainConfig(steps=2), pipe, tmp_path,
                  progress=False, latency_repeats=2, collection_seed=0)
    rows = {r["seed"]: r for r in csv.DictReader(open(tmp_path / "results.csv"))}
    assert sorted(p.name for p in (tmp_path / "3d").iterdir()) == ["seed0"]
    assert rows["0"]["status"] == rows["1"]["status"] == "ok"
    assert "collection of seed" not in rows["0"]["note"]
    assert rows["1"]["note"].startswith(rows["0"]["note"].split(";")[0] +
                                        " (collection of seed 0)")


def test_benchmark_shrinker_keeps_round_to_and_allocation(tiny_checkpoint, tiny_options):
    from dwrbench.methods import BenchContext
    from dwrprune.pipeline import DatasetSource

    cfg = PipelineConfig.from_dict({**tiny_options, "round_to": 4})
    ctx = BenchContext(DatasetSource("synthetic", batch_size=32), Path("."), cfg)
    shr = ctx.shrinker(dwrprune.load(tiny_checkpoint))
    assert shr.round_to == 4 and shr.width_allocation.name == "uniform"


def test_round_to_times_each_rounding_beside_the_original(tmp_path):
    """benchmarks/round_to.py: one row per (target, point, rounding), the channel counts the
    rounding gave, and a ratio against the original timed in the same rounds."""
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "round_to.py"),
                        "--points", "1,0.72,1;0.57,1,0.86", "--round-to", "8",
                        "--targets", "cpu-b1", "--repeats", "2", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "round_to.csv")))
    assert [(x["d"], x["round_to"]) for x in rows] == [("1.0", ""), ("1.0", "8"),
                                                       ("0.57", ""), ("0.57", "8")]
    assert rows[0]["channels"] == "11/23/46" and rows[1]["channels"] != rows[0]["channels"]
    assert all(int(c) % 8 == 0 for c in rows[1]["channels"].split("/"))
    assert all(float(x["ratio"]) > 0 for x in rows)
    text = (tmp_path / "table.md").read_text()
    assert "| as allocated | round to 8 |" in text and text.count("| cpu-b1-t1 |") == 2
    (tmp_path / "table.md").unlink()  # --render rebuilds it from the CSV alone
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "round_to.py"), "--render",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "table.md").read_text() == text


def test_time_finals_times_each_final_beside_the_original(tmp_path, tiny_checkpoint):
    """benchmarks/time_finals.py: a run folder's final model timed in turns with the
    original, one row per round, at the final's own input size; --render rebuilds the table
    from the CSV alone."""
    from dwrprune.cli import main as cli

    run = tmp_path / "run"
    assert cli(["shrink", "--checkpoint", str(tiny_checkpoint), "--width", "0.5",
                "--resolution", "0.5", "--data", "synthetic", "--recal-batches", "1",
                "--out", str(run / "final" / "model.pt"), "--no-progress"]) == 0
    out = tmp_path / "finals"
    script = str(ROOT / "benchmarks" / "time_finals.py")
    r = subprocess.run([sys.executable, script, "--checkpoint", str(tiny_checkpoint),
                        "--runs", str(run), "--targets", "cpu-b1", "--repeats", "3",
                        "--rounds", "2", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader(open(out / "finals.csv")))
    assert [(x["target"], x["round"]) for x in rows] == [("cpu-b1-t1", "0"), ("cpu-b1-t1", "1")]
    full = load(tiny_checkpoint).dwrprune_spec["input"]["resolution"]
    assert all(int(x["resolution"]) < full for x in rows)  # timed at its own, smaller input
    for x in rows:
        assert float(x["ratio"]) == pytest.approx(float(x["final_ms"]) / float(x["original_ms"]))
    text = (out / "table.md").read_text()
    assert text.count("| run | cpu-b1-t1 |") == 1 and "speed-up" in text
    (out / "table.md").unlink()
    r = subprocess.run([sys.executable, script, "--render", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "table.md").read_text() == text
