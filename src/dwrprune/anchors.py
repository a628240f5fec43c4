"""Anchors: a few points measured at the final horizon correct a predictor fitted to short
fine-tunes.

The predictor learns accuracy after a short collection fine-tune (150 steps in the full
preset); the user gets the accuracy after the final fine-tune (epochs, maybe distilled).
The gap is not the same along every axis: on ResNet-20 / Fashion-MNIST at 50% MACs the long
fine-tune recovers +0.3 points over the prediction for the width-only model but +1.3 and
+1.6 for the resolution- and depth-only ones.  A predictor that ignores this ranks
the axes wrongly.

An :class:`Anchor` is one point fine-tuned with the final recipe (mean validation accuracy
over its seeds).  :class:`HorizonCorrected` adds to the predictor a correction that is
additive over the axes and linear in each axis's log keep-ratio, fitted so that it passes
through every anchor's residual (measured - predicted) by least squares, and is zero at
the unpruned model:

    G(d, w, r) = F(d, w, r) + c_d log d + c_w log w + c_r log r

With the three one-axis points at the budget as anchors (the usual set: each pins one
coefficient) the corrected predictor equals the measurement at each anchor.  Its
:meth:`HorizonCorrected.gain` carries the base predictor's jackknife spread plus the anchors'
own measurement noise, so an uncertainty-aware choice (:func:`dwrprune.pipeline.solve_budget`)
leaves the best *measured* anchor only for a gain larger than both.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .errors import DwrpruneError


@dataclass(frozen=True)
class Anchor:
    """One point fine-tuned with the final recipe: its mean validation accuracy."""

    name: str
    d: float
    w: float
    r: float
    measured: float
    seeds: int = 1

    @property
    def point(self) -> tuple[float, float, float]:
        return (self.d, self.w, self.r)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(x: dict) -> Anchor:
        return Anchor(str(x["name"]), float(x["d"]), float(x["w"]), float(x["r"]),
                      float(x["measured"]), int(x.get("seeds", 1)))


def _logs(d, w, r) -> np.ndarray:
    return np.column_stack([np.log(np.clip(np.asarray(v, float), 1e-6, None))
                            for v in np.broadcast_arrays(d, w, r)])


class HorizonCorrected:
    """A predictor plus the per-axis log-linear correction its anchors imply.

    Behaves like :class:`dwrprune.predictor.Predictor` where the solver needs it:
    callable on (d, w, r) (scalars or arrays), ``gain``, ``lower``, ``noise_sd`` and
    ``jackknife`` (for the "has an uncertainty" check)."""

    def __init__(self, base, anchors: list[Anchor]):
        if not anchors:
            raise DwrpruneError("a horizon correction needs at least one anchor")
        self.base, self.anchors = base, list(anchors)
        X = _logs(*(np.array([getattr(a, k) for a in anchors]) for k in "dwr"))
        resid = np.array([a.measured - float(base(*a.point)) for a in anchors])
        # axes no anchor moves stay uncorrected (a zero column would make lstsq guess)
        self.moved = [bool(np.any(np.abs(X[:, i]) > 1e-9)) for i in range(3)]
        coef = np.zeros(3)
        cols = [i for i in range(3) if self.moved[i]]
        if cols:
            coef[cols] = np.linalg.lstsq(X[:, cols], resid, rcond=None)[0]
        self.coef = coef
        self.lower, self.upper = list(base.lower), list(base.upper)
        self.jackknife, self.noise_sd = base.jackknife, base.noise_sd

    def correction(self, d, w, r):
        out = _logs(d, w, r) @ self.coef
        return float(out[0]) if np.ndim(d) == np.ndim(w) == np.ndim(r) == 0 else out

    def __call__(self, d, w, r):
        return self.base(d, w, r) + self.correction(d, w, r)

    def gain(self, a, b) -> tuple[float, float]:
        """Corrected gain of ``a`` over ``b`` and its sd: the base predictor's spread of
        the gain, combined with the noise of the anchor measurements the correction rests
        on (one validation accuracy per seed, averaged)."""
        base_gain, base_sd = self.base.gain(a, b)
        gain = base_gain + self.correction(*a) - self.correction(*b)
        noise = self.noise_sd or 0.0
        anchor_sd = max((noise / math.sqrt(max(x.seeds, 1)) for x in self.anchors), default=0.0)
        return gain, math.sqrt(base_sd ** 2 + anchor_sd ** 2)

    def to_dict(self) -> dict:
        return {"coef": {"log_d": self.coef[0], "log_w": self.coef[1], "log_r": self.coef[2]},
                "anchors": [a.to_dict() for a in self.anchors]}


__all__ = ["Anchor", "HorizonCorrected"]
