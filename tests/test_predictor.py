import json
import warnings

import numpy as np
import pytest

from dwrprune import DwrpruneError
from dwrprune.search.predictor import Predictor, fit_predictor, make_surface, monotonicity


def _true(d, w, r):
    return 0.93 * (1 - 0.3 * (1 - d) ** 2) * (1 - 0.5 * (1 - w) ** 2) * (1 - 0.4 * (1 - r) ** 2)


def _axis_samples(noise=0.002, seed=0):
    X = [(1, 1, 1)]
    X += [(v, 1, 1) for v in (0.86, 0.71, 0.57, 0.43, 0.29)]
    X += [(1, v, 1) for v in (0.875, 0.75, 0.625, 0.5, 0.375)]
    X += [(1, 1, v) for v in (0.86, 0.71, 0.57, 0.43)]
    X += [(0.71, 0.75, 0.86), (0.57, 0.875, 0.71), (0.86, 0.625, 0.71)]
    X = np.array(X, float)
    y = np.array([_true(*x) for x in X]) + np.random.default_rng(seed).normal(0, noise, len(X))
    return X, y


@pytest.mark.parametrize("family,degree,rank", [("full", 2, 1), ("cp", 2, 2), ("separable", 2, 1)])
def test_families_fit_their_own_form(family, degree, rank):
    rng = np.random.default_rng(1)
    X = rng.uniform(0.3, 1, (60, 3))
    y = _true(*X.T)  # separable quadratic: representable by every family at degree 2
    p = make_surface(family, degree, rank).fit(X, y)
    assert np.abs(p.predict(X) - y).max() < 2e-3


@pytest.mark.slow
def test_loo_selection_predicts_unseen_mixed_points():
    X, y = _axis_samples()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = fit_predictor(X, y, max_degree=2)
    H = np.array([(0.6, 0.7, 0.8), (0.8, 0.6, 0.6), (0.5, 0.5, 0.9)])
    assert np.abs(pred(*H.T) - _true(*H.T)).max() < 0.01
    assert pred.loo_rmse < 0.01 and pred.monotone_report["monotone"]
    names = {(c["family"], c["degree"]) for c in pred.candidates}
    assert ("separable", 1) in names and ("cp", 2) in names
    assert pred.loo_rmse == min(c["loo_rmse"] for c in pred.candidates if c["monotone"])


@pytest.mark.parametrize("family", ["separable", "pchip"])
def test_predictor_json_round_trip(family):
    X, y = _axis_samples()
    pred = fit_predictor(X, y, families=[family], max_degree=2)
    again = Predictor.from_dict(json.loads(json.dumps(pred.to_dict())))
    assert again(0.6, 0.7, 0.8) == pytest.approx(pred(0.6, 0.7, 0.8))
    assert again.gain((0.6, 0.7, 0.8), (1, 0.5, 1)) == pytest.approx(
        pred.gain((0.6, 0.7, 0.8), (1, 0.5, 1)))


def test_pchip_interpolates_each_axis_and_multiplies():
    X, y = _axis_samples(noise=0)
    p = make_surface("pchip", 0).fit(X, y)
    axis = np.sum(X != 1, axis=1) <= 1
    assert np.abs(p.predict(X[axis]) - y[axis]).max() < 1e-12  # through every one-axis sample
    f0 = y[0]
    got = p.predict(np.array([[0.71, 0.75, 0.86]]))[0]
    want = f0 * (p.predict(np.array([[0.71, 1, 1]]))[0] / f0) \
        * (p.predict(np.array([[1, 0.75, 1]]))[0] / f0) \
        * (p.predict(np.array([[1, 1, 0.86]]))[0] / f0)
    assert got == pytest.approx(want)
    # between samples it stays near the smooth truth; the mixed points do not enter the fit
    H = np.array([(0.6, 0.7, 0.8), (0.8, 0.6, 0.6), (0.5, 0.5, 0.9)])
    assert np.abs(p.predict(H) - _true(*H.T)).max() < 0.005
    q = make_surface("pchip", 0).fit(X[axis], y[axis])
    assert np.allclose(q.predict(H), p.predict(H))


def test_pchip_is_monotone_on_noisy_samples_and_keeps_the_unpruned_accuracy():
    X, y = _axis_samples(noise=0)
    y = y.copy()
    y[1] = y[0] + 0.004  # the first depth cut measures above the unpruned model (noise)
    y[8] += 0.01  # w = 0.625 above w = 0.75
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "not monotone" warning
        pred = fit_predictor(X, y, families=["pchip"])
    assert pred.monotone_report["monotone"]
    assert pred(1, 1, 1) == pytest.approx(y[0])
    d = np.linspace(0.2, 1, 41)
    assert np.all(np.diff(pred(d, 1, 1)) >= -1e-12)
    assert np.all(np.diff(pred(1, d, 1)) >= -1e-12)
    assert pred(0.1, 1, 1) < pred(0.29, 1, 1)  # below the deepest sample: on linearly, falling


def test_pchip_loo_leaves_no_error_for_the_unpruned_sample():
    X, y = _axis_samples()
    pred = fit_predictor(X, y, keys=[f"s{i}" for i in range(len(y))], families=["pchip"])
    assert pred.residuals[0] is None and all(r is not None for r in pred.residuals[1:])
    assert len(pred.jackknife) == len(y) - 1
    assert 0 < pred.loo_rmse < 0.01
    assert pred.gain((1, 0.5, 1), (0.57, 1, 1))[1] > 0


def test_pchip_axis_never_pruned_and_samples_it_cannot_use():
    X, y = _axis_samples()
    keep = X[:, 2] == 1  # no resolution samples: the factor is 1
    pred = fit_predictor(X[keep], y[keep], families=["pchip"])
    assert pred(0.71, 0.75, 0.5) == pytest.approx(pred(0.71, 0.75, 1))
    mixed = np.sum(X != 1, axis=1) > 1
    with pytest.raises(DwrpruneError, match="pchip predictor needs the unpruned sample"):
        fit_predictor(X[mixed], y[mixed], families=["pchip"])
    # with polynomials beside it, LOO error chooses among what can be fitted
    other = fit_predictor(X[mixed | (np.arange(len(y)) < 3)], y[mixed | (np.arange(len(y)) < 3)],
                          families=["pchip", "separable"], max_degree=1)
    assert other.poly.family == "separable"


def test_too_few_samples():
    X, y = _axis_samples()
    with pytest.raises(DwrpruneError, match="too few samples"):
        fit_predictor(X[:4], y[:4], families=["full"])


def test_non_monotone_predictor_warns_with_location():
    X, _ = _axis_samples(noise=0)
    y = 0.9 * (1 - 0.3 * (1 - X[:, 0]) ** 2) * (1 - 2 * (X[:, 1] - 0.6) ** 2)  # peak at w=0.6
    with pytest.warns(UserWarning, match="not monotone .*w:"):
        fit_predictor(X, y, families=["separable"], max_degree=2, monotone="ignore")
    with pytest.raises(DwrpruneError, match="monotone"):
        fit_predictor(X, y, families=["separable"], max_degree=2, monotone="require")


def test_monotonicity_check_locates_violation():
    p = make_surface("separable", 2)
    p.coef = np.array([1.0, 0.0, 0.0, -1.5, 0.8, 0.0, 0.0])  # g(w) falls then rises
    rep = monotonicity(p, np.array([0.2] * 3), np.ones(3))
    assert not rep["monotone"] and set(rep["violations"]) == {"w"}


def test_bad_inputs():
    with pytest.raises(DwrpruneError, match="family"):
        fit_predictor(np.ones((10, 3)), np.ones(10), families=["spline"])
    with pytest.raises(DwrpruneError, match=r"\(n, 3\)"):
        fit_predictor(np.ones((10, 2)), np.ones(10))
