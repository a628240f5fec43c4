"""Uncertainty-aware choice: the predictor's optimum only when its predicted gain over the
best one-axis point exceeds its uncertainty."""

import numpy as np
import pytest

import dwrprune
from dwrprune import DwrpruneError
from dwrprune.pipeline import one_axis_point, solve_budget
from dwrprune.search.predictor import fit_predictor


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


@pytest.mark.slow
def test_pipeline_keeps_the_one_axis_point_under_a_strict_rule_and_says_why(
        tmp_path, tiny_checkpoint, tiny_options):
    """A rule no predicted gain can pass keeps the best one-axis point, and report.md says
    which point, the gain with its uncertainty, and why."""
    from dwrprune.pipeline import Run

    opts = {k: v for k, v in tiny_options.items() if k != "data"}
    res = dwrprune.prune(dwrprune.load(tiny_checkpoint), "synthetic", out=tmp_path / "run",
                         progress="never", min_gain_sigmas=1000.0,
                         checkpoint=str(tiny_checkpoint), **opts)
    run = Run(tmp_path / "run")
    assert run.load_config()[0].data == "synthetic"  # the dataset prune() was given
    dec = run.plan()["solution"]["decision"]
    assert dec["chosen"] == dec["best_one_axis"]["name"]
    assert [res.point[k] for k in "dwr"] == pytest.approx(
        [dec["best_one_axis"][k] for k in "dwr"])
    report = res.report_path.read_text()
    assert f"Best one-axis alternative: {dec['chosen']}" in report
    assert ("is kept" in report) or (f"optimum is {dec['chosen']} itself" in report)
    if "is kept" in report:  # the optimum passed over is labelled so, not "runner-up"
        assert "| predictor's optimum, not taken (gain within the uncertainty) |" in report
    assert "runner-up" not in report
    # fit_mixed (default off) fits on the chains and holds the mixed points out
    from dwrprune.pipeline import fit_samples

    cfg = run.load_config()[0]
    assert cfg.fit_mixed is False
    pred_chains, hold_chains = fit_samples(run.store(), cfg)
    pred_all, hold_all = fit_samples(run.store(), cfg.replace(fit_mixed=True))
    n_mixed = len(run.store().samples(kinds=("mixed",)))
    assert n_mixed and hold_chains["count"] == hold_all["count"] + n_mixed
    assert not any(k.startswith("mix/") for k in pred_chains.keys)
    assert any(k.startswith("mix/") for k in pred_all.keys)
