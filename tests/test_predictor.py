import warnings

import numpy as np
import pytest

from dwrprune import DwrpruneError
from dwrprune.predictor import Predictor, fit_predictor, make_polynomial, monotonicity


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
    p = make_polynomial(family, degree, rank).fit(X, y)
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


def test_predictor_json_round_trip():
    X, y = _axis_samples()
    pred = fit_predictor(X, y, families=["separable"], max_degree=2)
    again = Predictor.from_dict(pred.to_dict())
    assert again(0.6, 0.7, 0.8) == pytest.approx(pred(0.6, 0.7, 0.8))


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
    p = make_polynomial("separable", 2)
    p.coef = np.array([1.0, 0.0, 0.0, -1.5, 0.8, 0.0, 0.0])  # g(w) falls then rises
    rep = monotonicity(p, np.array([0.2] * 3), np.ones(3))
    assert not rep["monotone"] and set(rep["violations"]) == {"w"}


def test_bad_inputs():
    with pytest.raises(DwrpruneError, match="family"):
        fit_predictor(np.ones((10, 3)), np.ones(10), families=["spline"])
    with pytest.raises(DwrpruneError, match=r"\(n, 3\)"):
        fit_predictor(np.ones((10, 2)), np.ones(10))
