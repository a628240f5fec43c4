"""Stage 2: fit the accuracy predictor (MAP) on a run's samples; score it on held-out points."""

from __future__ import annotations

import warnings

import numpy as np
from tqdm.auto import tqdm

from ..errors import DwrpruneError
from ..io.store import SampleStore
from ..search.predictor import Predictor, fit_predictor, min_samples
from .config import PipelineConfig
from .run import Run


def fit_samples(store: SampleStore, cfg: PipelineConfig) -> tuple[Predictor, dict]:
    """Stage 2: fit the MAP on the non-holdout samples; score it on the holdout points.
    With ``fit_mixed`` off the mixed points are held out too, unless the chains alone are
    too few for the smallest candidate (then they join the fit, with a warning)."""
    chain_kinds = ("original", "chain") + (("bn_recal",) if cfg.fit_bn_samples else ())
    if not cfg.fit_mixed:
        chains = store.samples(kinds=chain_kinds)
        if chains and len(chains) < min_samples(cfg.families):
            tqdm.write(f"warning: {len(chains)} chain samples are too few to fit on the chains "
                       f"alone (at least {min_samples(cfg.families)}); the mixed points join "
                       "the fit")
            cfg = cfg.replace(fit_mixed=True)
    train_s = store.samples(kinds=chain_kinds + (("mixed",) if cfg.fit_mixed else ()))
    if not train_s:
        raise DwrpruneError(f"no samples in {store.path}; run the collect stage first")
    orig = [s.val_acc for s in train_s if s.kind == "original"]
    if orig and max(orig) <= 0.0:
        raise DwrpruneError(f"the original model scores {100 * max(orig):.2f}% on the "
                            "validation split, so there is no accuracy to keep: is it trained, "
                            "and does the data reach it preprocessed as in its own training?")
    planned = store.get_meta("planned")
    if isinstance(planned, list):
        have = {s.key for s in store.samples()}
        missing = [k for k in planned if k not in have]
        if missing:
            tqdm.write(f"warning: {len(missing)} of the {len(planned)} planned samples are "
                       f"missing ({', '.join(map(str, missing[:6]))}"
                       f"{', ...' if len(missing) > 6 else ''}): the collection did not finish; "
                       "the fit uses the others (run the collect stage again to complete it)")
    X = np.array([[s.d, s.w, s.r] for s in train_s])
    y = np.array([s.val_acc for s in train_s])
    n_val = store.get_meta("val_images") or _validation_size(cfg)
    top = float(np.max(y))
    noise = float(np.sqrt(top * (1 - top) / n_val)) if n_val else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pred = fit_predictor(X, y, [s.key for s in train_s], cfg.families, cfg.max_degree,
                             cfg.max_rank, cfg.monotone, noise)
    for wmsg in caught:
        tqdm.write(f"warning: {wmsg.message}")
    hold = store.samples(kinds=("holdout",) + (() if cfg.fit_mixed else ("mixed",)))
    holdout = {"count": len(hold), "points": []}
    if hold:
        errs = []
        for s in hold:
            p = pred(s.d, s.w, s.r)
            errs.append(p - s.val_acc)
            holdout["points"].append({"key": s.key, "d": s.d, "w": s.w, "r": s.r,
                                      "measured": s.val_acc, "predicted": p})
        holdout["mae"] = float(np.mean(np.abs(errs)))
        holdout["rmse"] = float(np.sqrt(np.mean(np.square(errs))))
    return pred, holdout


def _validation_size(cfg: PipelineConfig) -> int | None:
    """Images in the validation split a config names (for stores that predate recording
    it); None where dwrprune cannot know (a user's own data source)."""
    from ..training.data import create_dataset

    try:
        return len(create_dataset(cfg.data, "val", data_dir=cfg.data_dir,
                                  val_fraction=cfg.val_fraction, subset=cfg.val_subset))
    except DwrpruneError:
        return None


def fit_summary(pred: Predictor, holdout: dict) -> str:
    """The fit in one line: the predictor kept, its leave-one-out and held-out errors."""
    line = (f"predictor {pred.poly.name()}: LOO RMSE {100 * pred.loo_rmse:.2f} points, "
            f"MAE {100 * pred.loo_mae:.2f}; monotone: {pred.monotone_report['monotone']}")
    if holdout.get("count"):
        line += f"; held-out mixed points ({holdout['count']}): MAE {100 * holdout['mae']:.2f}"
    return line


def fit_run(run: Run, cfg: PipelineConfig) -> tuple[Predictor, dict]:
    """Fit on ``run``'s samples and save predictor.json."""
    with run.lock():
        pred, holdout = fit_samples(run.store(), cfg)
        run.save_predictor(pred, holdout)
    return pred, holdout
