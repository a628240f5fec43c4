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
    assert methods == {"3d", "width-only", "depth-only", "resolution-only", "torch-pruning"}
    assert len(rows) == 10  # 5 methods x 1 budget x 2 seeds
    for r in rows:
        assert r["status"] in ("ok", "infeasible")
        if r["status"] == "ok":
            assert float(r["macs"]) <= 0.5 * float(r["original_macs"])
            assert r["torch"] and r["cpu"] and r["threads"]
    assert (tmp_path / "compare.png").exists() and "± " in (tmp_path / "table.md").read_text()
    again = subprocess.run(cmd, capture_output=True, text=True)  # resumes: nothing to redo
    assert again.returncode == 0
    assert len(list(csv.DictReader(open(tmp_path / "results.csv")))) == 10
