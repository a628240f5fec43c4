import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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


def test_resume_with_other_recipe_is_refused(tmp_path):
    import pytest

    import dwrprune
    from dwrprune.bench import run_benchmark
    from dwrprune.pipeline import DatasetSource, resolve_config

    model = dwrprune.create_model("resnet_tiny", num_classes=10, in_channels=3)
    model.dwrprune_spec = dwrprune.checkpoint.make_spec("resnet_tiny", 10, 3, 16)
    data = DatasetSource("synthetic", batch_size=32)
    pipe = resolve_config(None, data="synthetic")
    run_benchmark(model, data, ["width-only"], [0.5], [0], dwrprune.TrainConfig(steps=1), pipe,
                  tmp_path, progress=False, latency_repeats=2)
    with pytest.raises(dwrprune.DwrpruneError, match="differs in: recipe"):
        run_benchmark(model, data, ["width-only"], [0.5], [1], dwrprune.TrainConfig(steps=2),
                      pipe, tmp_path, progress=False, latency_repeats=2)
