"""Stage 3: the best realisable (d, w, r) under a budget, for one budget or many."""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np
from tqdm.auto import tqdm

from ..errors import DwrpruneError
from ..pruning.shrink import Shrinker
from ..search.predictor import Predictor
from ..search.solver import Candidate, Solution, search_box, solve
from .config import PipelineConfig, field_defaults
from .points import ONE_AXIS, one_axis_point
from .run import Run


def exact_cost_grid(shrinker: Shrinker, d: float, lower: list[float], points: int = 25) -> dict:
    """Exact MACs ratios over a (w, r) grid at depth ``d``: the budget contour of the report."""
    base = shrinker.macs(1, 1, 1)
    ws = np.linspace(lower[1], 1, points)
    rs = np.linspace(max(lower[2], shrinker.min_resolution / shrinker.base_resolution), 1,
                     points)
    ratio = [[shrinker.macs(d, float(w), float(r)) / base for w in ws] for r in rs]
    return {"d": d, "w": ws.tolist(), "r": rs.tolist(), "ratio": ratio}


def _candidate(pred: Predictor, shr: Shrinker, point) -> Candidate:
    d, w, r = point
    macs, base = shr.macs(d, w, r), shr.macs(1, 1, 1)
    return Candidate(d, w, r, round(d * len(shr.blocks)), round(r * shr.base_resolution),
                     macs, macs / base, float(pred(d, w, r)))


def solve_budget(pred: Predictor, shrinker: Shrinker, budget: float,
                 lower: list[float] | None = None,
                 min_gain_sigmas: float | None = None) -> Solution:
    """Stage 3: the best realisable (d, w, r) under ``budget`` for a fitted predictor.

    The alternative the optimum is compared with is the one-axis point (the largest width-,
    depth- or resolution-only model under the budget, within the bounds) the predictor rates
    best.

    With ``min_gain_sigmas`` > 0 the choice is uncertainty-aware: the optimum is taken only
    when its predicted gain over the alternative exceeds that many standard deviations of
    the gain (:meth:`Predictor.gain`); otherwise the alternative is kept.  The default is
    the configuration's (:attr:`PipelineConfig.min_gain_sigmas`), so Python and the command
    line decide alike; 0 turns the rule off.  The solution's ``decision`` records the
    comparison either way."""
    if min_gain_sigmas is None:
        min_gain_sigmas = field_defaults()["min_gain_sigmas"]
    if min_gain_sigmas > 0 and not pred.jackknife and pred.noise_sd is None:
        raise DwrpruneError("this predictor was fitted before dwrprune recorded its "
                            "uncertainty; fit it again (`dwrprune fit --run RUN`)")
    lo = [min(max(v, 1e-3), 1.0) for v in search_box(lower, pred, shrinker)]
    base = shrinker.macs(1, 1, 1)
    sol = solve(pred, shrinker.macs, base, budget, tuple(lo),
                len(shrinker.blocks), shrinker.base_resolution, shrinker.min_resolution)
    alts = {name: _candidate(pred, shrinker, p) for name, axis in ONE_AXIS
            if (p := one_axis_point(shrinker, axis, budget)) is not None
            and all(v >= low - 1e-9 for v, low in zip(p, lo))}  # where it is fitted
    if not alts:
        return sol
    name, alt = max(alts.items(), key=lambda kv: kv[1].predicted)
    b = sol.best
    gain, sd = pred.gain((b.d, b.w, b.r), (alt.d, alt.w, alt.r))
    leave = min_gain_sigmas <= 0 or gain > min_gain_sigmas * sd
    same = (b.d, b.r, b.macs) == (alt.d, alt.r, alt.macs)  # the same pruned model
    why = (f"predictor's optimum is {name} itself" if same else
           f"predicted gain {100 * gain:+.2f} ± {100 * sd:.2f} points over {name} "
           + (f"exceeds {min_gain_sigmas:g} sd: the predictor's optimum" if leave and
              min_gain_sigmas > 0 else "(the rule is off: the predictor's optimum)" if leave
              else f"is within {min_gain_sigmas:g} sd: {name} is kept"))
    leave = leave and not same
    sol.decision = {"rule_sigmas": min_gain_sigmas, "optimum": asdict(b), "best_one_axis":
                    {"name": name, **asdict(alt)}, "gain": gain, "gain_sd": sd,
                    "chosen": "optimum" if leave else name, "why": why}
    if not leave:
        sol.runners_up = [b] + [c for c in sol.runners_up if c != alt][:3]
        sol.best = alt
    return sol


def plan_run(run: Run, shrinker: Shrinker, cfg: PipelineConfig,
             budgets: list[float] | None = None) -> list[dict]:
    """Solve every budget (default: the run's own) from one fitted predictor.  Writes
    plans.json (every budget) and, when the run's own budget is among them, plan.json (what
    the final stage prunes to).  Another budget for the final model is a new run setting:
    ``dwrprune prune --budget B`` on the same folder reuses the collection."""
    if cfg.max_drop is not None and not budgets:
        return [plan_max_drop(run, shrinker, cfg)]
    if cfg.latency_target is not None and not budgets:
        return plan_latency(run, shrinker, cfg)
    budgets = list(budgets) if budgets else [cfg.budget]
    for b in budgets:  # every budget checked before any is solved
        cfg.replace(budget=b)
    pred, _ = run.predictor()
    rows = []
    for b in budgets:
        sol = solve_budget(pred, shrinker, b, cfg.lower_bounds, cfg.min_gain_sigmas)
        params = shrinker.shrink(sol.best.d, sol.best.w, sol.best.r).params
        rows.append({"budget": b, "solution": sol, "params": params})
    with run.lock():
        run.save_plans([{**r, "solution": r["solution"].to_dict()} for r in rows])
        own = next((r for r in rows if abs(r["budget"] - cfg.budget) < 1e-12), None)
        if own is not None:
            _said_retired(run.save_plan(own["budget"], own["solution"], exact_cost_grid(
                shrinker, own["solution"].best.d, pred.lower)))
    return rows


def choice_line(sol: Solution, latency: dict | None = None) -> str:
    """The plan in one line: the chosen point, its cost and predicted accuracy."""
    b = sol.best
    if latency and latency.get("budget_ms") is None:  # the fastest within a drop
        cost = (f"measured {latency['measured']['median_ms']:.3g} ms on {latency['target']}, "
                f"{latency['fraction']:.2f} of the original's latency")
    elif latency:
        cost = f"modelled and measured within {latency['budget_ms']:.3g} ms on {latency['target']}"
    else:
        cost = f"MACs {b.macs_ratio:.3f} of the original"
    rounded = f", channels rounded down to multiples of {b.round_to}" if b.round_to else ""
    return (f"chose d={b.d:.3f} w={b.w:.3f} r={b.r:.3f} ({b.resolution} px{rounded}): {cost}, "
            f"predicted validation accuracy {100 * b.predicted:.2f}%"
            + (f" ({sol.decision['why']})" if sol.decision else ""))


def _said_retired(dest) -> None:
    if dest is not None:
        tqdm.write(f"[plan] the chosen point changed: the final model made for the old one, "
                   f"its figures and report were moved to {dest}")


def latency_model_for(run: Run, shrinker: Shrinker, target, progress=None):
    """The run's latency model for ``target``: cached in ``run/latency/``, else measured on
    this machine now (a minute or two) and cached."""
    from ..cost.latency import FEATURES, build_latency_model

    model = run.latency_model(target)
    if model is not None and (model.errors and not set(FEATURES) <= set(model.errors)
                              or model.out_of_date()):
        model = None  # cached before a kind of model existed, or its lookup table was
        # timed otherwise than its runtime times layers now: measure and choose again
    if model is None:
        tqdm.write(f"[latency] measuring a latency model on {target.key()} (shrunk models spread "
                   "over the box, timed on this machine; cached in the run folder)")
        model = build_latency_model(shrinker, target, progress=progress)
        with run.lock():
            run.save_latency_model(model)
        tqdm.write(f"[latency] {model.kind} model: held-out median error "
                   f"{100 * (model.heldout_median_ape or 0):.1f}%; the original measures "
                   f"{model.original_ms:.3g} ms")
    return model


def one_axis_curves(pred, shrinker: Shrinker, lat, lower, points: int = 12) -> dict:
    """Along each axis alone (the others whole): modelled latency as a fraction of the
    original's, and predicted accuracy; the trade-off a one-axis method offers on the
    target, drawn beside the chosen points by the report."""
    nb, px = len(shrinker.blocks), shrinker.base_resolution
    axes = {"depth": [(k / nb, 1.0, 1.0) for k in range(nb, 0, -1)
                      if k / nb >= lower[0] - 1e-9] if nb else [],
            "width": [(1.0, float(w), 1.0) for w in np.linspace(1.0, lower[1], points)],
            "resolution": [(1.0, 1.0, p / px) for p in range(
                px, max(shrinker.min_resolution, math.ceil(lower[2] * px - 1e-9)) - 1,
                -max(1, px // points))]}
    return {name: [{"fraction": lat(shrinker, *x) / lat.original_ms,
                    "predicted": float(pred(*x))} for x in pts]
            for name, pts in axes.items() if pts}


def plan_latency(run: Run, shrinker: Shrinker, cfg: PipelineConfig,
                 fractions: list[float] | None = None, progress=None, save: bool = True,
                 own_target: bool = True) -> list[dict]:
    """Choose (d, w, r) under latency budgets on the config's target, from the same
    predictor as MACs budgets: ``fractions`` of the original model's measured latency (default:
    the config's own budget).  ``save``: write plans.json; with ``own_target`` (the run's own
    target) the run's own budget also writes plan.json."""
    from ..cost.latency import Reference
    from ..search.latency import choose_under_latency

    target = cfg.latency_target or cfg.target()
    for f in fractions or []:  # every budget checked before any work
        cfg.replace(latency_budget=f, latency_ms=None)
    pred, _ = run.predictor()
    lat = latency_model_for(run, shrinker, target, progress)
    budgets = ([f * lat.original_ms for f in fractions] if fractions else
               [cfg.latency_ms if cfg.latency_ms else cfg.latency_budget * lat.original_ms])
    lo = search_box(cfg.lower_bounds, pred, shrinker)
    base = shrinker.macs(1, 1, 1)
    rows = []
    # a fraction of the original's latency is checked beside the original (drift cancels);
    # a budget in ms is checked as measured
    ref = (None if cfg.latency_ms and not fractions else
           Reference(shrinker.model, shrinker.base_resolution, lat.original_ms))
    curves = one_axis_curves(pred, shrinker, lat, lo)
    for ms in budgets:
        res = choose_under_latency(pred, shrinker, lat, ms, lo, reference=ref,
                                   round_to=cfg.latency_round_to)
        cands = [Candidate(c["d"], c["w"], c["r"], round(c["d"] * len(shrinker.blocks)),
                           c["resolution"], c["macs"], c["macs"] / base, c["predicted"],
                           c["round_to"])
                 for c in [res["best"], *res["runners_up"]]]
        info = {"target": target.key(), "budget_ms": ms, "original_ms": lat.original_ms,
                "fraction": ms / lat.original_ms, "measured": res["measured"],
                "steps": res["steps"], "latency_model": lat.kind,
                "heldout_median_ape": lat.heldout_median_ape, "curves": curves}
        rows.append({"budget": ms / lat.original_ms, "latency": info,
                     "solution": Solution(ms / lat.original_ms, base, None, cands[0],
                                          cands[1:])})
    own = None
    if own_target and cfg.latency_target is not None and not fractions:
        own = rows[0]
    elif own_target and cfg.latency_budget is not None:
        own = next((r for r in rows if abs(r["budget"] - cfg.latency_budget) < 1e-12), None)
    with run.lock():
        if lat.table is not None:  # the layer shapes the solver timed join the cached table
            run.save_latency_model(lat)
        if save:
            run.save_plans([{**r, "solution": r["solution"].to_dict()} for r in rows])
        if own is not None:
            _said_retired(run.save_plan(own["budget"], own["solution"], exact_cost_grid(
                shrinker, own["solution"].best.d, pred.lower), latency=own["latency"]))
    return rows


def drop_reference(run: Run):
    """The run's :class:`~dwrprune.search.within_drop.Reference` (the unpruned model
    fine-tuned as briefly as a chain step, against the original), or None where the
    collection has no reference sample (one collected without ``max_drop``)."""
    from ..search.within_drop import Reference
    from ..training.engine import PairedResult

    store = run.store()
    orig, ref = store.get("orig"), store.get("ref")
    n = store.get_meta("val_images")
    if orig is None or ref is None or ref.kind != "reference" or not n:
        return None
    try:  # the paired noise where it was recorded, else one accuracy's (conservative)
        pair = PairedResult(**store.get_meta("reference_paired"))
        sd = pair.difference_sd() if pair.count > 0 else None
    except (TypeError, ValueError):
        sd = None
    return Reference.measured(orig.val_acc, ref.val_acc, int(n), sd)


def plan_max_drop(run: Run, shrinker: Shrinker, cfg: PipelineConfig, progress=None,
                  save: bool = True, own_target: bool = True) -> dict:
    """The cheapest point whose hedged predicted drop stays within ``cfg.max_drop`` points
    (:func:`~dwrprune.search.within_drop.solve_max_drop`): fewest MACs, or on a latency
    target the lowest latency, where the few cheapest by the latency model are measured for
    real beside the original and the fastest measured is taken.  Writes plan.json."""
    from ..cost.latency import Reference, measure_ms
    from ..search.within_drop import solve_max_drop

    pred, _ = run.predictor()
    lo = search_box(cfg.lower_bounds, pred, shrinker)
    target = cfg.latency_target
    lat = latency_model_for(run, shrinker, target, progress) if target is not None else None
    reference = drop_reference(run)
    if reference is None:
        tqdm.write("[plan] no reference sample in this collection (it was collected without "
                 "--max-drop): the predicted drop is counted from the original itself, "
                 "which over-states it by what the brief fine-tune alone costs; run "
                 "collect or prune with --max-drop to add it")
    res = solve_max_drop(pred, shrinker, cfg.max_drop, lo, lat, reference=reference,
                         round_to=cfg.latency_round_to)
    cands = [res["best"], *res["runners_up"]]
    info = None
    if lat is not None:  # the model steers; the choice is the fastest measured of the few
        ref = Reference(shrinker.model, shrinker.base_resolution, lat.original_ms)
        for c in cands[:3]:
            out = shrinker.rounded(c["round_to"]).shrink(c["d"], c["w"], c["r"])
            c["measured"] = measure_ms(out.model, out.spec["input"]["resolution"], target,
                                       reference=ref)
        cands = sorted(cands[:3], key=lambda c: c["measured"]["median_ms"]) + cands[3:]
        m = cands[0]["measured"]
        if m["ratio"] >= 1.0:
            raise DwrpruneError(
                f"no model predicted within {cfg.max_drop:g} points of the original is faster "
                f"than the original on {target.key()} (the fastest measured "
                f"{m['ratio']:.2f}x its latency); allow a larger drop")
        info = {"target": target.key(), "budget_ms": None, "original_ms": lat.original_ms,
                "fraction": m["ratio"], "measured": m, "steps": [],
                "latency_model": lat.kind, "heldout_median_ape": lat.heldout_median_ape}
    base = shrinker.macs(1, 1, 1)
    chosen = [Candidate(c["d"], c["w"], c["r"], round(c["d"] * len(shrinker.blocks)),
                        c["resolution"], c["macs"], c["macs"] / base, c["predicted"],
                        c["round_to"]) for c in cands]
    budget = info["fraction"] if info else chosen[0].macs_ratio
    sol = Solution(budget, base, None, chosen[0], chosen[1:])
    b = cands[0]
    counted = ("" if reference is None else
               f", counted from the original fine-tuned as briefly as the samples "
               f"({100 * reference.shortfall:.2f} points below the original)")
    sol.decision = {"max_drop": cfg.max_drop, "predicted_drop": b["drop"],
                    "drop_sd": b["drop_sd"], "minimised": res["minimised"],
                    "reference": res["reference"],
                    "why": f"the {'fastest measured' if info else 'fewest MACs'} of the points "
                           f"whose predicted drop {100 * b['drop']:.2f} + one sd "
                           f"{100 * b['drop_sd']:.2f} stays within {cfg.max_drop:g} points"
                           f"{counted}",
                    "chosen": "max_drop"}
    row = {"budget": budget, "solution": sol, "latency": info, "max_drop": cfg.max_drop}
    with run.lock():
        if save:
            run.save_plans([{**row, "solution": sol.to_dict()}])
        if own_target:
            _said_retired(run.save_plan(budget, sol, exact_cost_grid(
                shrinker, b["d"], pred.lower), latency=info))
    return row


def parse_targets(text: str, threads: int = 1) -> list:
    """``cpu-b1,ort-b1,cudagraph-b1`` as latency targets, each checked usable here (the
    runtime installed, the device present): one error before any work."""
    from ..cost.latency import LatencyTarget

    names = [t.strip() for t in str(text).split(",") if t.strip()]
    if not names:
        raise DwrpruneError("--targets needs at least one target, like cpu-b1,ort-b1")
    targets = [LatencyTarget.parse(n, threads) for n in names]
    keys = [t.key() for t in targets]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise DwrpruneError(f"target {twice[0]} is listed twice in --targets")
    for t in targets:
        t.check()
    return targets


def plan_targets(run: Run, shrinker: Shrinker, cfg: PipelineConfig, targets: list,
                 fractions: list[float] | None = None, progress=None) -> list[dict]:
    """One collection planned for many targets: for every target, the choice under each
    latency budget in ``fractions`` (or, with ``cfg.max_drop``, the fastest within the
    drop), each with its own cached latency model.  Writes every row to plans.json; plan.json
    only for the run's own target and budget."""
    if not fractions and cfg.max_drop is None and cfg.latency_target is None:
        raise DwrpruneError("planning for latency targets needs latency budgets "
                            "(--latency-budgets 0.5,0.7) or --max-drop")
    own = cfg.latency_target
    rows: list[dict] = []
    for t in targets:
        tcfg = cfg.replace(device=t.device, latency_batch=t.batch, threads=t.threads,
                           runtime=t.runtime, **({"max_drop": None} if fractions else {}))
        if cfg.max_drop is not None and not fractions:
            rows.append(plan_max_drop(run, shrinker, tcfg, progress, save=False,
                                      own_target=t == own))
        else:
            rows += plan_latency(run, shrinker, tcfg, fractions, progress, save=False,
                                 own_target=t == own)
    with run.lock():
        run.save_plans([{**r, "solution": r["solution"].to_dict()} for r in rows])
    return rows
