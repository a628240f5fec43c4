"""Choosing (d, w, r): the accuracy predictor and the solvers.

    predictor  the model accuracy predictor (MAP): monotone interpolation or polynomials
    solver     max F(d, w, r) under a MACs budget: KKT, then the realisable points near it
    latency    the choice under a measured latency budget
"""

from .predictor import fit_predictor

__all__ = ["fit_predictor"]
