"""The Model Accuracy Predictor (MAP): accuracy as a function of (d, w, r).

Four families.  Three are polynomials of degree K in each variable:

* ``full``: every coefficient of the (K+1)^3 tensor, F = sum lambda_ijk d^i w^j r^k
  (least squares; needs many samples, and axis-only samples cannot pin its cross terms);
* ``cp``: the low-rank specialisation of Wang et al., lambda_ijk = sum_s a_si b_sj c_sk,
  i.e. F = sum_s p_s(d) q_s(w) t_s(r) (nonlinear least squares, several fixed starts);
* ``separable``: F = F0 * f(d) g(w) h(r) with f(1) = g(1) = h(1) = 1, so F(1, 1, 1) is the
  unpruned accuracy by construction; each factor is identifiable from one axis's samples.

The fourth, ``pchip`` (the default), keeps the separable form but makes no global shape
assumption: each factor is SciPy's monotone piecewise-cubic Hermite interpolant through that
axis's one-axis samples (isotonic-regressed first, so it never rises as the axis is pruned),
so the predictor between two samples follows those two samples, not a curve bent by the
deepest cuts.  It uses only one-axis samples (and the unpruned one); it is C1, so the KKT
solver's gradients exist.  Against the iso-cost oracle it ranks the budget surfaces best
(README, "Choosing right").

Among the families given, degree and rank are chosen by leave-one-out cross-validation.  The
fitted predictor is checked for monotonicity (accuracy should not rise as any dimension is
pruned) on a grid over the searched box; ``monotone="prefer"`` picks the best monotone
candidate when one exists.
NumPy and SciPy only: no torch here.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy.interpolate import PchipInterpolator
from scipy.optimize import isotonic_regression, least_squares

from ..errors import DwrpruneError
from ..registry import Registry

# The families of F(d, w, r): registered by name, each builds itself from (degree, rank).
FAMILIES: Registry = Registry("predictor family")


def _powers(x: np.ndarray, k: int) -> np.ndarray:
    """(n,) -> (n, k+1) Vandermonde columns x^0..x^k."""
    return np.vander(np.asarray(x, float), k + 1, increasing=True)


class AccuracySurface:
    """A fitted model of accuracy over (d, w, r): a polynomial family or the monotone
    interpolant.  ``to_dict``/``from_dict`` store it as plain data in ``predictor.json``."""

    family = "base"

    def __init__(self, degree: int, rank: int = 1):
        self.degree, self.rank = degree, rank
        self.coef: np.ndarray | None = None

    @property
    def n_params(self) -> int:
        raise NotImplementedError

    def fit(self, X: np.ndarray, y: np.ndarray) -> AccuracySurface:
        raise NotImplementedError

    def predict(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def to_dict(self) -> dict:
        return {"family": self.family, "degree": self.degree, "rank": self.rank,
                "coef": np.asarray(self.coef).tolist()}

    @staticmethod
    def from_dict(d: dict) -> AccuracySurface:
        return FAMILIES.get(d["family"]).from_coef(d["coef"], d["degree"], d.get("rank", 1))

    @classmethod
    def from_coef(cls, coef, degree: int, rank: int = 1) -> AccuracySurface:
        p = cls(degree, rank)
        p.coef = np.asarray(coef, float)
        return p

    def name(self) -> str:
        raise NotImplementedError


class Polynomial(AccuracySurface):
    """The paper's polynomial F = sum lambda_ijk d^i w^j r^k, in one of its parameterisations."""

    def name(self) -> str:
        return f"{self.family}(K={self.degree}" + (f", R={self.rank})" if self.family == "cp"
                                                   else ")")


@FAMILIES.register(name="full")
class FullPolynomial(Polynomial):
    family = "full"

    @property
    def n_params(self) -> int:
        return (self.degree + 1) ** 3

    def _features(self, X):
        P = [_powers(X[:, i], self.degree) for i in range(3)]
        return np.einsum("ni,nj,nk->nijk", *P).reshape(len(X), -1)

    def fit(self, X, y):
        A = self._features(X)
        lam = 1e-6  # a whisper of ridge keeps the normal equations well posed
        self.coef = np.linalg.solve(A.T @ A + lam * np.eye(A.shape[1]), A.T @ y)
        return self

    def predict(self, X):
        return self._features(np.atleast_2d(X)) @ self.coef


@FAMILIES.register(name="cp")
class CPPolynomial(Polynomial):
    family = "cp"

    @property
    def n_params(self) -> int:
        return 3 * self.rank * (self.degree + 1)

    def _unpack(self, theta):
        return theta.reshape(3, self.rank, self.degree + 1)

    def _eval(self, theta, X):
        A = self._unpack(theta)
        P = [_powers(X[:, i], self.degree) for i in range(3)]  # (n, K+1)
        terms = [P[i] @ A[i].T for i in range(3)]  # each (n, R)
        return (terms[0] * terms[1] * terms[2]).sum(1)

    def fit(self, X, y, starts: int = 3):
        rng = np.random.default_rng(0)
        best, best_cost = None, np.inf
        scale = max(abs(float(np.mean(y))), 1e-3) ** (1 / 3)
        for _ in range(starts):
            theta0 = rng.normal(0, 0.3, self.n_params)
            theta0.reshape(3, self.rank, -1)[:, :, 0] += scale / self.rank ** (1 / 3)
            res = least_squares(
                lambda t: np.concatenate([self._eval(t, X) - y, 1e-3 * t]), theta0,
                method="lm", max_nfev=300 * self.n_params)
            if res.cost < best_cost:
                best, best_cost = res.x, res.cost
        self.coef = best
        return self

    def predict(self, X):
        return self._eval(self.coef, np.atleast_2d(np.asarray(X, float)))


@FAMILIES.register(name="separable")
class SeparablePolynomial(Polynomial):
    """F0 * f(d) g(w) h(r); each factor 1 + sum_k c_k (x^k - 1), so it equals 1 at x = 1."""

    family = "separable"

    @property
    def n_params(self) -> int:
        return 1 + 3 * self.degree

    def _eval(self, theta, X):
        f0, C = theta[0], theta[1:].reshape(3, self.degree)
        out = np.full(len(X), f0)
        for i in range(3):
            P = _powers(X[:, i], self.degree)[:, 1:] - 1.0  # x^k - 1, k >= 1
            out = out * (1.0 + P @ C[i])
        return out

    def fit(self, X, y):
        theta0 = np.concatenate([[float(np.max(y))], np.zeros(3 * self.degree)])
        theta0[1::self.degree] = 0.1  # a mild linear start in each variable
        res = least_squares(lambda t: np.concatenate([self._eval(t, X) - y, 1e-3 * t[1:]]),
                            theta0, method="trf", max_nfev=4000)
        self.coef = res.x
        return self

    def predict(self, X):
        return self._eval(self.coef, np.atleast_2d(np.asarray(X, float)))


@FAMILIES.register(name="pchip")
class MonotoneInterpolant(AccuracySurface):
    """F0 * f(d) g(w) h(r); each factor the PCHIP interpolant through the isotonic fit of
    that axis's one-axis samples (mean accuracy per value / F0), equal to 1 at x = 1.  Beyond
    the outermost samples (leave-one-out only: the solver searches inside them) it goes on
    linearly with the end slope.  ``coef`` holds F0 and each axis's knots."""

    family = "pchip"

    def __init__(self, degree: int = 0, rank: int = 1):
        super().__init__(0, 1)

    @property
    def n_params(self) -> int:
        return 4  # F0 and one shape per axis; the knots come from the samples

    @staticmethod
    def usable(X: np.ndarray) -> bool:
        """Whether ``X`` holds the unpruned point and, on every axis the samples prune, a
        one-axis sample (what the interpolant is built from)."""
        X = np.asarray(X, float)
        if not np.any(np.all(X == 1, axis=1)):
            return False
        return all(np.all(X[:, i] == 1) or np.any((X[:, i] < 1) & on_axis(X, i))
                   for i in range(3))

    def fit(self, X, y):
        X, y = np.asarray(X, float), np.asarray(y, float)
        if not self.usable(X):
            raise DwrpruneError("the pchip predictor needs the unpruned sample and one-axis "
                                "samples on every pruned axis; use a polynomial family "
                                "(separable, cp, full) for other samples")
        f0 = float(np.mean(y[np.all(X == 1, axis=1)]))
        if not f0 > 0:
            raise DwrpruneError("the unpruned model's measured accuracy is 0: the pchip "
                                "predictor models accuracy relative to it; is the model trained "
                                "and the data what it expects?")
        knots = []
        for i in range(3):
            xi, yi = X[on_axis(X, i), i], y[on_axis(X, i)] / f0
            xs = np.unique(xi)
            mean = np.array([yi[xi == v].mean() for v in xs])
            weight = np.array([np.sum(xi == v) for v in xs], float)
            weight[-1] = 1e9  # the unpruned point stays at 1
            knots.append([xs.tolist(), isotonic_regression(mean, weights=weight).x.tolist()])
        return self._set({"f0": f0, "knots": knots})

    def _set(self, coef: dict) -> MonotoneInterpolant:
        self.coef = coef
        self._f = [PchipInterpolator(xs, ys) if len(xs) > 1 else None
                   for xs, ys in coef["knots"]]
        return self

    @classmethod
    def from_coef(cls, coef, degree: int = 0, rank: int = 1) -> MonotoneInterpolant:
        return cls()._set(coef)

    def predict(self, X):
        X = np.atleast_2d(np.asarray(X, float))
        out = np.full(len(X), self.coef["f0"])
        for i, f in enumerate(self._f):
            if f is None:
                continue
            lo, hi = f.x[0], f.x[-1]
            x = np.clip(X[:, i], lo, hi)
            ends = np.where(X[:, i] < lo, f(lo, 1) * (X[:, i] - lo),
                            np.where(X[:, i] > hi, f(hi, 1) * (X[:, i] - hi), 0.0))
            out = out * (f(x) + ends)
        return out

    def to_dict(self) -> dict:
        return {"family": self.family, "degree": 0, "rank": 1, "coef": self.coef}

    def name(self) -> str:
        return "pchip(monotone, separable)"


def on_axis(X: np.ndarray, i: int) -> np.ndarray:
    """Rows of ``X`` that prune axis ``i`` alone (or nothing)."""
    return np.all(np.delete(X, i, axis=1) == 1, axis=1)


# The paper's families, in the order the fit tries them after the interpolant.
POLYNOMIALS = tuple(n for n in FAMILIES if issubclass(FAMILIES.get(n), Polynomial))


def make_surface(family: str, degree: int, rank: int = 1) -> AccuracySurface:
    """An unfitted accuracy surface of a registered ``family``."""
    return FAMILIES.get(family)(degree, rank)


# ---------------------------------------------------------------------------- model selection
def loo_fits(poly_factory, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, list]:
    """Leave-one-out prediction errors (predicted - measured) for every sample, and the
    leave-one-out fits themselves (the jackknife the predictor's uncertainty comes from).
    A sample whose removal leaves nothing to fit (pchip's unpruned sample) gets NaN."""
    errs, fits = np.full(len(y), np.nan), []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                p = poly_factory().fit(X[keep], y[keep])
            except DwrpruneError:  # pchip without its only unpruned sample: no error there
                continue
        errs[i] = p.predict(X[i : i + 1])[0] - y[i]
        fits.append(p)
    return errs, fits


def loo_errors(poly_factory, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Leave-one-out prediction errors (predicted - measured) for every sample."""
    return loo_fits(poly_factory, X, y)[0]


def monotonicity(poly: AccuracySurface, lo: np.ndarray, hi: np.ndarray, points: int = 9,
                 tol: float = 0.005) -> dict:
    """Where, on a grid over [lo, hi]^3, the predictor gives back accuracy as a variable grows.

    Along every grid line parallel to an axis, the give-back at a point is how far F lies
    below its running maximum from the lower end; a line violates monotonicity when that
    exceeds ``tol`` (accuracy as a fraction: 0.005 is half a point), so wiggles within the
    samples' noise do not count.
    """
    axes = [np.linspace(lo[i], hi[i], points) for i in range(3)]
    G = np.array(list(itertools.product(*axes)))
    F = poly.predict(G).reshape(points, points, points)
    report = {"grid_points": len(G), "tolerance": tol, "violations": {}, "monotone": True}
    for i, name in enumerate("dwr"):
        line = np.moveaxis(F, i, -1)
        give_back = np.maximum.accumulate(line, axis=-1) - line
        frac = float((give_back.max(-1) > tol).mean())
        if frac > 0:
            idx = np.unravel_index(int(np.argmax(np.moveaxis(give_back, -1, i))), F.shape)
            report["monotone"] = False
            report["violations"][name] = {
                "fraction_of_lines": frac, "max_give_back": float(give_back.max()),
                "worst_at": {"d": float(axes[0][idx[0]]), "w": float(axes[1][idx[1]]),
                             "r": float(axes[2][idx[2]])}}
    return report


@dataclass
class Predictor:
    """A fitted MAP with its selection record (JSON-serialisable via ``to_dict``)."""

    poly: AccuracySurface
    loo_rmse: float
    loo_mae: float
    residuals: list[float | None]
    keys: list[str]
    lower: list[float]
    upper: list[float]
    monotone_report: dict
    candidates: list[dict] = field(default_factory=list)
    jackknife: list[list[float]] = field(default_factory=list)  # LOO fits' coefficients
    noise_sd: float | None = None  # sd of one measured accuracy (binomial, validation size)

    def gain(self, a, b) -> tuple[float, float]:
        """Predicted gain F(a) - F(b) of point ``a`` over point ``b`` (each (d, w, r)) and its
        standard deviation: the jackknife spread of the gain over the leave-one-out fits,
        floored at the noise of one measured accuracy (a gain smaller than that cannot be
        told from a tie)."""
        gain = float(self(*a)) - float(self(*b))
        sd = 0.0
        if self.jackknife:
            X = np.array([a, b], float)
            g = []
            for coef in self.jackknife:
                p = AccuracySurface.from_dict({**self.poly.to_dict(), "coef": coef})
                fa, fb = p.predict(X)
                g.append(fa - fb)
            g = np.asarray(g)
            n = len(g)
            sd = float(np.sqrt((n - 1) / n * np.sum((g - g.mean()) ** 2)))
        return gain, max(sd, self.noise_sd or 0.0)

    def __call__(self, d, w, r) -> np.ndarray | float:
        X = np.column_stack(np.broadcast_arrays(np.asarray(d, float), np.asarray(w, float),
                                                np.asarray(r, float)))
        out = self.poly.predict(X)
        return float(out[0]) if np.ndim(d) == 0 and np.ndim(w) == 0 and np.ndim(r) == 0 else out

    def to_dict(self) -> dict:
        return {"model": self.poly.to_dict(), "name": self.poly.name(),
                "loo_rmse": self.loo_rmse, "loo_mae": self.loo_mae,
                "residuals": dict(zip(self.keys, self.residuals)),
                "lower": self.lower, "upper": self.upper,
                "monotonicity": self.monotone_report, "candidates": self.candidates,
                "jackknife": self.jackknife, "noise_sd": self.noise_sd}

    @staticmethod
    def from_dict(d: dict) -> Predictor:
        return Predictor(AccuracySurface.from_dict(d["model"]), d["loo_rmse"], d["loo_mae"],
                         list(d["residuals"].values()), list(d["residuals"]), d["lower"],
                         d["upper"], d["monotonicity"], d.get("candidates", []),
                         d.get("jackknife", []), d.get("noise_sd"))


def min_samples(families: list[str]) -> int:
    """Samples the smallest candidate of ``families`` needs (degree 1, rank 1), room for a
    held-out sample and an error estimate included."""
    return min(make_surface(f, 1).n_params for f in families) + 2


def fit_predictor(X, y, keys: list[str] | None = None, families=None, max_degree: int = 3,
                  max_rank: int = 2, monotone: str = "prefer",
                  noise_sd: float | None = None) -> Predictor:
    """Choose family, degree and rank by leave-one-out error; fit on all samples.

    ``X``: (n, 3) array of (d, w, r); ``y``: accuracies.  ``monotone``: "prefer" (best
    monotone candidate if any), "require" (error if none) or "ignore".  ``noise_sd``: the
    standard deviation of one measured accuracy, the floor of :meth:`Predictor.gain`'s.
    """
    X, y = np.asarray(X, float), np.asarray(y, float)
    if X.ndim != 2 or X.shape[1] != 3 or len(X) != len(y):
        raise DwrpruneError(f"predictor needs an (n, 3) array of (d, w, r) and n accuracies, "
                            f"got {X.shape} and {y.shape}")
    if monotone not in ("prefer", "require", "ignore"):
        raise DwrpruneError(f"monotone must be prefer, require or ignore, got {monotone!r}")
    families = ["pchip", *POLYNOMIALS] if families is None else families
    for f in families:
        FAMILIES.get(f)  # an unknown family is one clear error
    keys = keys or [str(i) for i in range(len(y))]
    lo, hi = X.min(0), X.max(0)
    specs = []
    for f in families:
        if f == "pchip":
            if MonotoneInterpolant.usable(X) and len(y) >= min_samples(["pchip"]):
                specs.append((f, 0, 1))
            continue
        for k in range(1, max_degree + 1):
            for rk in (range(1, max_rank + 1) if f == "cp" else [1]):
                p = make_surface(f, k, rk)
                if p.n_params <= len(y) - 2:  # leave room for the held-out sample and error
                    specs.append((f, k, rk))
    if not specs and list(families) == ["pchip"]:
        raise DwrpruneError("the pchip predictor needs the unpruned sample and one-axis "
                            f"samples on every pruned axis, {min_samples(['pchip'])} samples "
                            "at least; collect chains along each axis, or choose a polynomial "
                            "family (separable, cp, full)")
    if not specs:
        smallest = min_samples(families) - 2
        raise DwrpruneError(
            f"too few samples to fit the predictor: {len(y)} samples, the smallest candidate "
            f"({', '.join(families)}, degree 1) needs at least {smallest + 2}; collect more "
            "samples (more steps per axis or mixed points)")
    cands = []
    for f, k, rk in specs:
        errs, fits = loo_fits(lambda f=f, k=k, rk=rk: make_surface(f, k, rk), X, y)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = make_surface(f, k, rk).fit(X, y)
        mono = monotonicity(p, lo, hi)
        cands.append({"family": f, "degree": k, "rank": rk, "n_params": p.n_params,
                      "loo_rmse": float(np.sqrt(np.nanmean(errs ** 2))),
                      "loo_mae": float(np.nanmean(np.abs(errs))), "monotone": mono["monotone"],
                      "_poly": p, "_errs": errs, "_mono": mono,
                      "_jack": [q.to_dict()["coef"] for q in fits]})
    cands.sort(key=lambda c: c["loo_rmse"])
    pool = cands
    if monotone != "ignore":
        # Prefer a monotone candidate, but not at any price: within 25% of the best LOO error.
        limit = np.inf if monotone == "require" else 1.25 * cands[0]["loo_rmse"] + 1e-12
        mono_cands = [c for c in cands if c["monotone"] and c["loo_rmse"] <= limit]
        if mono_cands:
            pool = mono_cands
        elif monotone == "require":
            raise DwrpruneError("no candidate predictor is monotone over the sampled range; "
                                "collect more samples or use monotone='prefer'")
    best = pool[0]
    if not best["monotone"]:
        v = best["_mono"]["violations"]
        where = "; ".join(f"{n}: {x['fraction_of_lines']:.0%} of grid lines, worst at "
                          f"d={x['worst_at']['d']:.2f} w={x['worst_at']['w']:.2f} "
                          f"r={x['worst_at']['r']:.2f}" for n, x in v.items())
        warnings.warn(f"accuracy predictor {best['_poly'].name()} is not monotone ({where})",
                      stacklevel=2)
    table = [{k: v for k, v in c.items() if not k.startswith("_")} for c in cands]
    return Predictor(best["_poly"], best["loo_rmse"], best["loo_mae"],
                     [None if np.isnan(e) else float(e) for e in best["_errs"]], keys,
                     lo.tolist(), hi.tolist(), best["_mono"], table, best["_jack"], noise_sd)
