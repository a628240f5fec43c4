"""Uncertainty-aware choice: the predictor's optimum only when its predicted gain over the
best one-axis point exceeds its uncertainty."""

import numpy as np
import pytest

import dwrprune
from dwrprune import DwrpruneError
from dwrprune.pipeline import one_axis_point, solve_budget
from dwrprune.predictor import fit_predictor


def _samples(noise: float, seed: int = 0):
    """Accuracy that favours keeping width (w) over depth and resolution, plus noise."""
    rng = np.random.default_rng(seed)
    X = np.array([[d, w, r] for d in (1.0, 0.71, 0.43) for w in (1.0, 0.75, 0.5)
                  for r in (1.0, 0.79, 0.57)])
    y = 0.93 - 0.02 * (1 - X[:, 0]) - 0.10 * (1 - X[:, 1]) ** 2 - 0.04 * (1 - X[:, 2])
    return X, y + rng.normal(0, noise, len(y))


@pytest.fixture(scope="module")
def shrinker():
    return dwrprune.Shrinker(dwrprune.load(dwrprune.pretrained.path()))


def test_one_axis_points_are_the_largest_under_budget(shrinker):
    base = shrinker.macs(1, 1, 1)
    d, w, r = one_axis_point(shrinker, "w", 0.5)
    assert (d, r) == (1.0, 1.0) and shrinker.macs(d, w, r) <= 0.5 * base
    assert shrinker.macs(1, w + 0.01, 1) > 0.5 * base
    assert one_axis_point(shrinker, "d", 0.05) is None  # depth alone cannot get there


def test_gain_uncertainty_is_jackknife_floored_at_measurement_noise():
    X, y = _samples(0.004)
    pred = fit_predictor(X, y, families=["separable"], max_degree=2, noise_sd=0.003)
    gain, sd = pred.gain((1.0, 0.9, 1.0), (1.0, 0.6, 1.0))
    assert gain > 0.01 and sd >= 0.003
    tiny_gain, tiny_sd = pred.gain((1.0, 0.8, 1.0), (1.0, 0.8, 1.0))
    assert tiny_gain == 0.0 and tiny_sd == pytest.approx(0.003)  # the noise floor
    noisy = fit_predictor(*_samples(0.02), families=["separable"], max_degree=2)
    assert noisy.gain((0.71, 0.8, 0.9), (1.0, 0.7, 1.0))[1] > sd  # noisier data, wider


def test_rule_keeps_the_one_axis_point_when_the_gain_is_within_noise(shrinker):
    X, y = _samples(0.004)
    pred = fit_predictor(X, y, families=["separable"], max_degree=2, noise_sd=0.003)
    free = solve_budget(pred, shrinker, 0.5, [0.4, 0.4, 0.5], 0.0)
    assert free.decision["chosen"] == "optimum"
    gain, sd = free.decision["gain"], free.decision["gain_sd"]
    strict = solve_budget(pred, shrinker, 0.5, [0.4, 0.4, 0.5], gain / sd + 1.0)
    alt = strict.decision["best_one_axis"]
    assert strict.decision["chosen"] == alt["name"]
    assert (strict.best.d, strict.best.w, strict.best.r) == (alt["d"], alt["w"], alt["r"])
    assert strict.best.macs <= 0.5 * strict.base_macs
    assert "is kept" in strict.decision["why"]
    loose = solve_budget(pred, shrinker, 0.5, [0.4, 0.4, 0.5], max(gain / sd - 0.5, 0.01))
    assert loose.decision["chosen"] == "optimum"


def test_rule_needs_a_predictor_with_uncertainty(shrinker):
    X, y = _samples(0.004)
    pred = fit_predictor(X, y, families=["separable"], max_degree=1)
    pred.jackknife = []
    with pytest.raises(DwrpruneError, match="fit it again"):
        solve_budget(pred, shrinker, 0.5, None, 1.0)


def _anchors(pred, shrinker, offsets):
    from dwrprune.anchors import Anchor

    out = []
    for (name, axis), off in zip((("width-only", "w"), ("depth-only", "d"),
                                  ("resolution-only", "r")), offsets):
        p = one_axis_point(shrinker, axis, 0.5)
        out.append(Anchor(name, *p, float(pred(*p)) + off, seeds=2))
    return out


def test_horizon_correction_passes_through_the_anchors_and_is_zero_unpruned(shrinker):
    from dwrprune.anchors import HorizonCorrected

    pred = fit_predictor(*_samples(0.002), families=["separable"], max_degree=2,
                         noise_sd=0.003)
    anchors = _anchors(pred, shrinker, (0.003, 0.016, 0.013))
    g = HorizonCorrected(pred, anchors)
    for a in anchors:
        assert g(*a.point) == pytest.approx(a.measured, abs=1e-9)
    assert g(1.0, 1.0, 1.0) == pytest.approx(pred(1.0, 1.0, 1.0))
    assert g.coef[1] < 0 and g.coef[0] < 0  # a positive residual at a pruned point
    arr = g(np.array([1.0, 0.8]), np.array([0.9, 0.9]), np.array([1.0, 1.0]))
    assert arr.shape == (2,) and arr[0] == pytest.approx(g(1.0, 0.9, 1.0))
    # one anchor moves one axis: the other axes stay uncorrected
    only_w = HorizonCorrected(pred, anchors[:1])
    assert only_w.coef[0] == only_w.coef[2] == 0.0
    # the gain's uncertainty includes the anchors' measurement noise
    assert g.gain((0.8, 0.8, 0.9), anchors[0].point)[1] >= 0.003 / np.sqrt(2)


@pytest.mark.parametrize("offsets,expect", [((0.0, 0.0, 0.0), None),
                                            ((0.02, -0.02, -0.02), "width-only")])
def test_anchored_rule_compares_with_the_best_measured_anchor(shrinker, offsets, expect):
    pred = fit_predictor(*_samples(0.002), families=["separable"], max_degree=2,
                         noise_sd=0.003)
    anchors = _anchors(pred, shrinker, offsets)
    sol = solve_budget(pred, shrinker, 0.5, [0.4, 0.4, 0.5], 1.0, anchors)
    dec = sol.decision
    best = max(anchors, key=lambda a: a.measured)
    assert dec["best_one_axis"]["name"] == best.name
    assert dec["best_one_axis"]["predicted"] == best.measured  # measured, not predicted
    assert dec["anchors"]["anchors"][0]["name"] == "width-only"
    assert sol.best.macs <= 0.5 * sol.base_macs
    if expect:  # width measured well above its prediction: nothing beats it by 1 sd
        assert dec["chosen"] == expect and "measured width-only" in dec["why"]
        assert (sol.best.d, sol.best.w, sol.best.r) == best.point


@pytest.mark.slow
def test_pipeline_with_anchors_keeps_a_measured_anchor_and_reuses_its_model(
        tmp_path, tiny_checkpoint, tiny_options, capsys):
    """anchors=2: the two best-predicted one-axis points are fine-tuned with the final
    recipe before choosing; a rule no gain can pass keeps the best measured one, and the
    final stage takes its model instead of fine-tuning the same point again."""
    from dwrprune.cli import main
    from dwrprune.pipeline import Run

    opts = {k: v for k, v in tiny_options.items() if k != "data"}
    res = dwrprune.prune(dwrprune.load(tiny_checkpoint), "synthetic", out=tmp_path / "run",
                         progress="never", anchors=2, min_gain_sigmas=1000.0,
                         checkpoint=str(tiny_checkpoint), **opts)
    run = Run(tmp_path / "run")
    assert run.load_config()[0].data == "synthetic"  # the dataset prune() was given
    dec = run.plan()["solution"]["decision"]
    assert [a["name"] for a in dec["anchors"]["anchors"]] and len(dec["anchors"]["anchors"]) == 2
    assert dec["chosen"] == dec["best_one_axis"]["name"]
    kept = next(a for a in dec["anchors"]["anchors"] if a["name"] == dec["chosen"])
    assert res.spec.provenance["finetune"]["from_anchor"] is True
    assert res.report["val_acc"] == pytest.approx(kept["measured"])  # the same model
    assert len(list((tmp_path / "run" / "anchors").glob("*/result.json"))) == 2
    report = res.report_path.read_text()
    assert "measured with the final recipe" in report and "Anchors (" in report
    # fit_mixed: false fits on the chains and holds the mixed points out
    from dwrprune.pipeline import fit_samples

    cfg = run.load_config()[0]
    _, hold_all = fit_samples(run.store(), cfg)
    pred_chains, hold_chains = fit_samples(run.store(), cfg.replace(fit_mixed=False))
    n_mixed = len(run.store().samples(kinds=("mixed",)))
    assert n_mixed and hold_chains["count"] == hold_all["count"] + n_mixed
    assert not any(k.startswith("mix/") for k in pred_chains.keys)
    # the plan stage needs the anchors it asks for
    assert main(["plan", "--run", str(tmp_path / "run"), "--anchors", "3"]) == 2
    assert "2 are measured; run `dwrprune anchor" in capsys.readouterr().err
    assert main(["anchor", "--run", str(tmp_path / "run"), "--anchors", "3",
                 "--no-progress"]) == 0
    assert main(["plan", "--run", str(tmp_path / "run"), "--anchors", "3"]) == 0


def test_anchors_option_is_checked():
    from dwrprune.pipeline import resolve_config

    with pytest.raises(DwrpruneError, match="anchors must be 0 to 3"):
        resolve_config("quick", anchors=4)
