"""The iso-cost oracle: points on a budget's surface, and regret / rank correlation."""

import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dwrprune
from dwrbench.oracle import same_model, summarise_oracle, surface_points

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("budget", [0.5, 0.3])
def test_surface_points_lie_just_under_the_budget(budget):
    shr = dwrprune.Shrinker(dwrprune.load(dwrprune.pretrained.path()))
    pts = surface_points(shr, budget, [1.0, 0.857, 0.714], [1.0, 0.929],
                         choices={"mine": (0.857, 0.80, 0.929)})
    iso = [p for p in pts if p.iso]
    assert len(iso) >= 5
    for p in iso:
        assert budget - 0.03 <= p.macs_ratio <= budget
        assert p.macs_ratio == shr.macs(p.d, p.w, p.r) / shr.macs(1, 1, 1)
    kinds = {p.kind for p in pts}
    assert {"width-only", "resolution-only", "grid"} <= kinds
    for a in pts:  # no model twice
        assert sum(same_model(a, b) for b in pts) == 1


def _rows(budget=0.5):
    table = {"a": (0.93, 0.931, 0.92), "b": (0.95, 0.936, 0.93), "c": (0.90, 0.925, 0.91)}
    rows = []
    for label, (val, test, pred) in table.items():
        for seed, dv in ((0, -0.001), (1, 0.001)):
            rows.append({"budget": str(budget), "label": label, "kind": "grid", "d": "1.0",
                         "w": "0.5", "r": "1.0", "macs_ratio": "0.49", "iso": "True",
                         "seed": str(seed), "val_acc": str(val + dv), "test_acc": str(test),
                         "predicted": str(pred)})
    return rows


def test_rank_reliability_averages_every_pair_of_seeds():
    rows = _rows()
    third = [dict(r, seed="2", val_acc=str(1.8 - float(r["val_acc"]))) for r in rows
             if r["seed"] == "0"]
    s = summarise_oracle(rows + third, 0.5)  # seed 2 ranks the points the other way round
    assert [(a, b, n) for a, b, n, _ in s["seed_pairs"]] == [(0, 1, 3), (0, 2, 3), (1, 2, 3)]
    assert s["split_half"] == pytest.approx((1 - 1 - 1) / 3)
    held = {a: (n, rho) for a, n, rho in s["held_out_seeds"]}  # each seed against the others
    assert set(held) == {0, 1, 2} and held[2] == (3, pytest.approx(-1.0))
    partial = summarise_oracle(rows + third[:2], 0.5)  # two points only: no rank to take
    assert [(a, b) for a, b, _, _ in partial["seed_pairs"]] == [(0, 1)]


@pytest.mark.slow
def test_rank_noise_ceiling_falls_as_points_get_closer():
    from dwrbench.oracle import rank_noise_ceiling

    def points(gap):
        return [[0.9 + i * gap + e for e in (-0.001, 0.001, 0.0)] for i in range(8)]

    (far, far_pass), (near, near_pass) = (rank_noise_ceiling(points(g)) for g in (0.01, 0.0005))
    assert far > 0.99 and far_pass == 1.0 and 0.0 < near < 0.9 and near_pass < far_pass
    assert rank_noise_ceiling([[0.9, 0.9], [0.9, 0.9], [0.9, 0.9]]) == (0.0, 0.0)  # all equal
    assert all(map(math.isnan, rank_noise_ceiling([[0.9], [0.8], [0.7]])))  # one seed each


@pytest.mark.slow
def test_a_far_point_does_not_lift_the_ceiling_of_a_flat_cluster():
    """One point far below a flat cluster is ranked last by every redraw, so it adds only its
    own (exact) share to the Spearman correlation: with it last in both rankings, the rank
    differences are the cluster's, and rho(n + 1) = 1 - (1 - rho(n)) * n(n^2 - 1) /
    ((n + 1)((n + 1)^2 - 1)).  A plain variance of the means, inflated by the far point,
    would leave the cluster's means unshrunk and overstate the ceiling."""
    from dwrbench.oracle import rank_noise_ceiling

    rng = np.random.default_rng(0)
    cluster = [[0.93 + 0.0003 * i + e for e in rng.normal(0, 0.002, 3)] for i in range(11)]
    alone, _ = rank_noise_ceiling(cluster)
    with_far, _ = rank_noise_ceiling(cluster + [[0.906, 0.9075]])
    exact = 1 - (1 - alone) * (11 * 120) / (12 * 143)
    assert 0.3 < alone < 0.95 and with_far == pytest.approx(exact, abs=0.03)


@pytest.mark.slow
def test_regret_and_rank_correlation():
    s = summarise_oracle(_rows(), 0.5)
    by = {p["label"]: p for p in s["points"]}
    assert s["best_by_val"] == "b" and [p["label"] for p in s["points"]] == ["b", "a", "c"]
    assert by["b"]["regret"] == pytest.approx(0.0)
    assert by["c"]["regret"] == pytest.approx(0.011)
    assert by["a"]["val_std"] == pytest.approx(0.001414, rel=1e-3)
    assert s["spearman"] == pytest.approx(1.0)  # predictor order b > a > c, as measured
    assert s["split_half_points"] == 3 and s["split_half"] == pytest.approx(1.0)
    noisy = _rows()
    for r in noisy:  # the second seed ranks the points the other way round
        if r["seed"] == "1":
            r["val_acc"] = str(1.8 - float(r["val_acc"]))
    assert summarise_oracle(noisy, 0.5)["split_half"] == pytest.approx(-1.0)
    flipped = summarise_oracle(_rows(), 0.5, predictor=lambda d, w, r: 0.0 if d else 1.0)
    assert flipped["points"][0]["predicted"] == 0.0
    with pytest.raises(dwrprune.DwrpruneError, match="no oracle rows"):
        summarise_oracle(_rows(), 0.3)


@pytest.mark.slow
def test_oracle_fine_tunes_side_by_side_on_ray(tmp_path):
    pytest.importorskip("ray")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "oracle.py"), "run", "--quick",
           "--out", str(tmp_path), "--no-progress", "--executor", "ray", "--job-cpus", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "oracle.csv")))
    keys = [(x["label"], x["seed"]) for x in rows]  # every (point, seed) once: one writer
    assert len(keys) == len(set(keys)) == 2 * len({x["label"] for x in rows}) > 2
    assert all(0 <= float(x["val_acc"]) <= 1 for x in rows)


@pytest.mark.slow
def test_oracle_quick_runs_resumes_and_renders(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "oracle.py"), "run", "--quick",
           "--out", str(tmp_path), "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "oracle.csv")))
    labels = {x["label"] for x in rows}
    assert {"width-only", "resolution-only"} <= labels and len(rows) == 2 * len(labels)
    assert "regret" in r.stdout and "Spearman" in r.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0
    assert len(list(csv.DictReader(open(tmp_path / "oracle.csv")))) == len(rows)  # resumed
    budget = rows[0]["budget"]
    cand = [sys.executable, str(ROOT / "benchmarks" / "oracle.py"), "candidates", "--out",
            str(tmp_path), "--run", str(tmp_path / "run"), "--budgets", budget]
    r = subprocess.run(cand + ["--final-oracle", budget], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    table = (tmp_path / f"candidates-corrected-by-oracle-{float(budget):g}.md").read_text()
    own, corrected = table.splitlines()[2:4]
    assert "nan" not in own and f"{len(rows)} rows" in corrected
    assert corrected.count("nan") == 3  # never judged on the rows it was fitted to
    r = subprocess.run(cand + ["--final-oracle", "0.99"], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 2 and r.stderr.strip() == ("oracle.py: error: no oracle rows at "
                                                      "budget 0.99")
    proxy = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "oracle.py"), "proxy",
                            "--out", str(tmp_path), "--run", str(tmp_path / "run"),
                            "--budgets", budget, "--recal-batches", "2"],
                           capture_output=True, text=True, timeout=600)
    assert proxy.returncode == 0, proxy.stderr[-2000:]
    table = (tmp_path / "proxy-adaptive-bn.md").read_text()
    iso = {x["label"] for x in rows if x["iso"] == "True"}
    assert "Spearman" in table and sum(f"| {lab} |" in table for lab in iso) == len(iso)
    assert all(0 <= float(line.split("|")[6]) <= 100 for line in table.splitlines()
               if line.startswith("| ") and not line.startswith("| point"))


@pytest.mark.parametrize("power", [0.5, 1.0, 2.0])
def test_extrapolate_horizon_follows_the_learning_curve(power):
    from dwrbench.oracle import extrapolate_horizon

    def curve(t):
        return 0.93 - 0.4 * t ** -power

    got = extrapolate_horizon(curve(150), curve(400), 150, 400, 1266, power)
    assert got == pytest.approx(curve(1266))
    assert curve(400) < got < 0.93  # beyond the longer horizon, short of the asymptote
    with pytest.raises(dwrprune.DwrpruneError, match="t_short < t_long"):
        extrapolate_horizon(0.9, 0.91, 400, 150, 1266)


def test_corrected_predictor_recovers_a_linear_miss():
    """Cheap samples biased by a linear function of (d, w, r): a few final-horizon samples
    put the correction back exactly (away from them too); too few are refused."""
    import numpy as np

    from dwrbench.oracle import corrected_predictor

    def truth(d, w, r):
        return 0.93 - 0.05 * (1 - d) ** 2 - 0.08 * (1 - w) ** 2 - 0.1 * (1 - r) ** 2

    def cheap(d, w, r):  # a shorter horizon: lower, and depth cuts flattered
        return truth(d, w, r) - 0.01 + 0.02 * (1 - d) - 0.03 * (1 - w)

    rng = np.random.default_rng(0)
    X = rng.uniform(0.4, 1.0, (6, 3))
    fixed = corrected_predictor(cheap, X, [truth(*x) for x in X], ridge=0.0)
    for x in rng.uniform(0.4, 1.0, (5, 3)):
        assert fixed(*x) == pytest.approx(truth(*x), abs=1e-9)
    with pytest.raises(dwrprune.DwrpruneError, match="at least 4 final-horizon samples"):
        corrected_predictor(cheap, X[:3], [truth(*x) for x in X[:3]])


def test_remeasure_reliability_ranks_k_seeds_against_the_others():
    from dwrbench.oracle import remeasure_reliability

    agree = [{s: base + 0.001 * s for s in range(4)} for base in (0.90, 0.91, 0.92)]
    assert remeasure_reliability(agree, 1) == (pytest.approx(1.0), 1.0, 4)
    assert remeasure_reliability(agree, 2) == (pytest.approx(1.0), 1.0, 6)
    # seed 3 ranks the points backwards: the three choices of one seed that leave it among
    # the others still agree (its reversal is outvoted), the one that picks it disagrees
    flip = [{**v, 3: 1.82 - v[0]} for v in agree]
    rho, ok, n = remeasure_reliability(flip, 1)
    assert n == 4 and ok == 0.75 and rho == pytest.approx((3 * 1.0 - 1.0) / 4)
    assert math.isnan(remeasure_reliability(agree, 4)[0])  # no seed left to compare with
    assert remeasure_reliability(agree[:2], 1)[2] == 0  # two points: no rank to take


def test_seed_group_shift_is_the_mean_per_point_difference():
    from dwrbench.oracle import seed_group_shift

    rows = [{"budget": "0.5", "label": lab, "seed": str(s), "val_acc": str(base + 0.01 * (s >= 2)
             + 0.001 * s), "test_acc": str(base)}
            for lab, base in (("a", 0.90), ("b", 0.92), ("c", 0.93)) for s in range(4)]
    rows.append({"budget": "0.3", "label": "a", "seed": "3", "val_acc": "0", "test_acc": "0"})
    s = seed_group_shift(rows, 0.5, {0, 1}, {2, 3})
    assert s["val"] == (pytest.approx(0.012), pytest.approx(0.0), 3)  # 0.01 + 0.002 each
    assert s["test"] == (pytest.approx(0.0), pytest.approx(0.0), 3)
    assert math.isnan(seed_group_shift(rows, 0.5, {0}, {9})["val"][0])  # no point has seed 9
