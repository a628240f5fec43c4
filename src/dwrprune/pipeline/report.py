"""The run report: what was measured, what was fitted, what was chosen and what it gave.

Writes ``report/report.json``, ``report/report.md`` and three plots: samples and fitted
curves per axis, a (w, r) slice of the predictor at d* with the budget curve and the chosen
point, and validation accuracy against MACs for every sample.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..errors import DwrpruneError  # noqa: E402
from ..io.files import save_json  # noqa: E402
from ..io.store import SampleStore  # noqa: E402
from .run import Run  # noqa: E402

_COLORS = {"original": "k", "chain": "tab:blue", "mixed": "tab:green", "holdout": "tab:red",
           "bn_recal": "tab:gray", "reference": "tab:purple"}


def save_figure(fig, path: Path) -> None:
    """Every dwrprune plot is written the same way (and closed, so long runs hold none)."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _read(run: Path, name: str):
    p = run / name
    return json.loads(p.read_text()) if p.exists() else None


def plot_axes(samples: list[dict], pred, path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=True)
    for i, (ax, name) in enumerate(zip(axes, "dwr")):
        others = [a for a in "dwr" if a != name]
        pts = [s for s in samples if s["kind"] in ("original", "chain")
               and all(abs(s[o] - 1) < 1e-9 for o in others)]
        if pts:
            ax.scatter([s[name] for s in pts], [100 * s["val_acc"] for s in pts],
                       c="tab:blue", label="samples along this axis", zorder=3)
        if pred is not None:
            lo = min([s[name] for s in samples] + [pred.lower[i]])
            xs = np.linspace(lo, 1, 100)
            args = [np.ones_like(xs)] * 3
            args[i] = xs
            ax.plot(xs, 100 * pred(*args), "tab:orange", label="predictor (others at 1)")
        ax.set_xlabel({"d": "depth d (blocks kept)", "w": "width w (channels kept)",
                       "r": "resolution r (side kept)"}[name])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation accuracy (%)")
    axes[0].legend(fontsize=8)
    save_figure(fig, path)


def plot_slice(pred, plan: dict, path: Path) -> None:
    best = plan["solution"]["best"]
    budget = plan["solution"]["budget"]
    lo_w, lo_r = pred.lower[1], pred.lower[2]
    W, R = np.meshgrid(np.linspace(lo_w, 1, 80), np.linspace(lo_r, 1, 80))
    Z = 100 * pred(np.full(W.size, best["d"]), W.ravel(), R.ravel()).reshape(W.shape)
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    cs = ax.contourf(W, R, Z, levels=20, cmap="viridis")
    fig.colorbar(cs, ax=ax, label="predicted validation accuracy (%)")
    grid = plan.get("grid") if not plan.get("latency") else None  # a MACs budget's contour
    if grid:  # exact MACs of the realised models: everything below-left of it fits
        ax.contour(grid["w"], grid["r"], grid["ratio"], levels=[budget], colors="w",
                   linestyles="--")
        ax.plot([], [], "w--", label=f"exact MACs = {budget:g} x original")
    ws = np.linspace(lo_w, 1, 200)
    rs = np.sqrt(budget / (best["d"] * ws ** 2))
    ok = (rs >= lo_r) & (rs <= 1)
    if ok.any() and grid:
        ax.plot(ws[ok], rs[ok], ":", color="silver", label="cost model d w² r²")
    ax.plot(best["w"], best["r"], "r*", ms=16, label="chosen point")
    c = plan["solution"]["continuous"]
    if c:
        ax.plot(c["w"], c["r"], "wo", ms=7, mfc="none",
                label=f"continuous KKT optimum (d={c['d']:.2f})")
    ax.set_xlabel("width w")
    ax.set_ylabel("resolution r")
    ax.set_title(f"predictor at d = {best['d']:.2f}")
    ax.legend(fontsize=7, loc="lower right")
    save_figure(fig, path)


def plot_acc_vs_macs(samples: list[dict], final: dict | None, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4.4))
    base = next((s["macs"] for s in samples if s["kind"] == "original"), None)
    for kind, color in _COLORS.items():
        pts = [s for s in samples if s["kind"] == kind]
        if pts:
            ax.scatter([s["macs"] / 1e6 for s in pts], [100 * s["val_acc"] for s in pts],
                       c=color, label=kind, s=22, zorder=3)
    if final:
        ax.scatter([final["macs"] / 1e6], [100 * final["val_acc"]], marker="*", s=220,
                   c="tab:orange", edgecolors="k", label="final (fine-tuned)", zorder=4)
    if base:
        ax.axvline(base / 1e6, color="k", lw=0.5, ls=":")
    ax.set_xlabel("MACs (M)")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_targets(rows: list[dict], path: Path) -> bool:
    """Per latency target in plans.json: predicted accuracy against latency (a fraction of
    the original's) for the chosen points (measured) and along each axis alone (modelled).
    False when there is nothing to draw."""
    by_target: dict[str, list[dict]] = {}
    for r in rows:
        lat = r.get("latency") if isinstance(r, dict) else None
        if lat and lat.get("measured"):
            by_target.setdefault(lat["target"], []).append(r)
    if not by_target:
        return False
    fig, axes = plt.subplots(1, len(by_target), figsize=(5 * len(by_target), 4), squeeze=False)
    for ax, (key, rs) in zip(axes[0], by_target.items()):
        for name, pts in (rs[0]["latency"].get("curves") or {}).items():
            ax.plot([p["fraction"] for p in pts], [100 * p["predicted"] for p in pts], "-",
                    label=f"{name} only (modelled)")
        m = [r["latency"]["measured"] for r in rs]
        frac = [x.get("ratio", x["median_ms"] / r["latency"]["original_ms"])
                for x, r in zip(m, rs)]
        ax.scatter(frac, [100 * r["solution"]["best"]["predicted"] for r in rs], marker="*",
                   s=160, c="tab:red", edgecolors="k", zorder=4, label="chosen (measured)")
        ax.set_title(key)
        ax.set_xlabel("latency / original's")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("predicted validation accuracy (%)")
    axes[0][0].legend(fontsize=7)
    save_figure(fig, path)
    return True


def write_report(run_dir: str | Path) -> dict:
    """Render whatever stages the run folder has finished."""
    run = Path(run_dir)
    if not (run / "samples.sqlite").is_file():
        raise DwrpruneError(f"{run} has no samples yet; run the collect stage first")
    with Run(run).lock():
        return _write_report(run)


def _write_report(run: Path) -> dict:
    store = SampleStore(run / "samples.sqlite")
    samples, axes = store.as_dicts(), store.get_meta("axes")
    folder = Run(run)  # every stage file read through its checks, or one clear error
    pred = folder.predictor()[0] if (run / "predictor.json").exists() else None
    pred_body = _read(run, "predictor.json")
    plan = None
    if (run / "plan.json").exists():
        folder.solution()
        plan = folder.plan()
    final = folder.final() if (run / "final.json").exists() else None
    out = run / "report"
    out.mkdir(parents=True, exist_ok=True)
    plot_axes(samples, pred, out / "axes.png")
    plot_acc_vs_macs(samples, final, out / "acc_vs_macs.png")
    if pred and plan:
        plot_slice(pred, plan, out / "slice.png")
    plans = _read(run, "plans.json")
    targets = isinstance(plans, list) and plot_targets(plans, out / "targets.png")
    report = {"samples": samples, "predictor": pred_body, "plan": plan,
              "final": {k: v for k, v in (final or {}).items() if k != "history"} or None,
              "collection_seconds": sum(s["seconds"] for s in samples), "axes": axes,
              "block_order": _read(run, "block_order.json"), "run": str(run),
              "targets_plot": bool(targets), "engine": _engine(store),
              "out_of_date": folder.out_of_date()}
    try:
        text = _markdown(report)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise DwrpruneError(f"{run}: plan.json or final.json lacks what the report needs "
                            f"({type(e).__name__}: {str(e)[:80]}); re-run the plan and "
                            "finetune stages") from None
    save_json(out / "report.json", report)
    (out / "report.md").write_text(text)
    return report


def _engine(store: SampleStore) -> dict:
    """How the samples were trained: precision, memory layout, data path."""
    cfg = store.get_meta("collect_config") or {}
    return {"precision": cfg.get("precision", "fp32"),
            "channels_last": bool(cfg.get("channels_last", False)),
            "data_path": store.get_meta("data_path") or 1}


def _markdown(rep: dict) -> str:
    """The answer first (result, how to deploy it, speed-ups, channels, removed blocks),
    then how it was chosen (choice, predictor, samples, axes)."""
    lines = ["# dwrprune run report", ""]
    for why in rep.get("out_of_date") or []:
        lines.append(f"> **Out of date:** {why}.")
    if rep.get("out_of_date"):
        lines.append("")
    f = rep["final"]
    lines += _result(f, rep) if f else [
        "No final model yet: the stages done so far are below (run `dwrprune finetune --run "
        "RUN` after the plan stage).", ""]
    lines += _choice(rep["plan"], f) + _predictor(rep["predictor"]) + _samples(rep)
    if rep.get("targets_plot"):
        lines += ["## Latency targets", "", "Per target planned (`dwrprune plan --targets`): "
                  "predicted accuracy against latency, the chosen points as measured and "
                  "each axis alone as modelled.", "", "![targets](targets.png)", ""]
    lines += ["", "![per-axis](axes.png)", "", "![slice](slice.png)", "",
              "![accuracy vs MACs](acc_vs_macs.png)", ""]
    return "\n".join(lines)


def _times(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def alignment_note(result: dict) -> str | None:
    """A line when pruning left channel counts off multiples of 8 (None otherwise, and
    where the model was measured on a target other than PyTorch on the CPU: that
    measurement speaks for itself)."""
    from ..cost.rounding import ALIGN, misaligned

    odd = misaligned([(c["before"], c["after"]) for c in result.get("channels") or []])
    target = (result.get("latency") or {}).get("target")
    if not odd or (target is not None and not target.startswith("cpu-")):
        return None
    distinct = sorted(set(odd))
    shown = ", ".join(str(c) for c in distinct[:6]) + (", ..." if len(distinct) > 6 else "")
    return (f"{len(odd)} pruned layers have channel counts off a multiple of {ALIGN} "
            f"({shown}): ONNX Runtime and GPUs can run such a model slower than the original; "
            f"prune with --round-to {ALIGN} for those targets (docs/latency.md)")


def _result(f: dict, rep: dict) -> list[str]:
    p = f["point"]
    drop = 100 * (f["original_test_acc"] - f["test_acc"])
    lines = ["## Result", "",
             f"Pruned to d={p['d']:.3f} w={p['w']:.3f} r={p['r']:.3f} "
             f"({p['resolution']} px input): {_times(f['original_macs'], f['macs'])} fewer "
             f"MACs, {_times(f['original_params'], f['params'])} fewer parameters. Test "
             f"accuracy {100 * f['original_test_acc']:.2f}% -> {100 * f['test_acc']:.2f}% "
             f"({-drop:+.2f} points); validation: predicted {100 * f['predicted_val_acc']:.2f}%, "
             f"measured {100 * f['val_acc']:.2f}% after fine-tuning "
             f"({100 * f['val_acc_before_finetune']:.2f}% before).", ""]
    if f.get("latency"):
        lines += [f"**{f['latency']['line']}**", ""]
    md = f.get("max_drop")
    if md:
        ref = md.get("reference_shortfall")
        counted = ("counted from the original" if ref is None else
                   f"counted from the original fine-tuned as briefly as the samples, which "
                   f"scored {ref:.2f} points below it")
        lines += [f"Allowed drop {md['allowed']:g} points of validation accuracy: predicted "
                  f"{md['predicted_drop']:.2f} (sd {md['drop_sd']:.2f}; {counted}); "
                  f"measured after fine-tuning {md['val_drop']:.2f} on validation, "
                  f"{md['test_drop']:.2f} on test.", ""]
    if f.get("contract"):
        lines += ["## Deploy it", "",
                  f"- model: `{rep['run']}/final/model.pt`: `dwrprune.load(path)` in Python; "
                  f"`dwrprune export --checkpoint {rep['run']}/final/model.pt --onnx "
                  "model.onnx` for ONNX (give `--model` again for a class of your own)",
                  f"- feed it: {f['contract']}", ""]
    lat, olat = f["latency_ms"], f["original_latency_ms"]
    lines += ["## Speed-ups", "", "| | original | pruned | original / pruned |",
              "|---|---|---|---|",
              f"| MACs (M) | {f['original_macs'] / 1e6:.2f} | {f['macs'] / 1e6:.2f} | "
              f"{_times(f['original_macs'], f['macs'])} |",
              f"| params (K) | {f['original_params'] / 1e3:.1f} | {f['params'] / 1e3:.1f} | "
              f"{_times(f['original_params'], f['params'])} |"]
    for b in lat:
        lines.append(f"| latency batch {b}, CPU 1 thread, PyTorch (ms) | {olat[b]:.3f} | "
                     f"{lat[b]:.3f} | {_times(olat[b], lat[b])} |")
    v = f.get("latency")
    if v and not (v["target"].startswith("cpu-") and v["target"].endswith("-t1")):
        lines.append(f"| latency on {v['target']} (ms) | {v['original_ms']:.3f} | "
                     f"{v['median_ms']:.3f} | {_times(v['original_ms'], v['median_ms'])} |")
    lines.append(f"| test accuracy (%) | {100 * f['original_test_acc']:.2f} | "
                 f"{100 * f['test_acc']:.2f} | |")
    lines.append("")
    if f.get("channels"):
        changed = [c for c in f["channels"] if c["after"] != c["before"]]
        lines += ["## Channels per layer", "",
                  f"{len(changed)} of {len(f['channels'])} convolution and linear layers "
                  "changed (blank: the layer went with a removed block).", "",
                  "| layer | before | after |", "|---|---|---|"]
        lines += [f"| {c['layer']} | {c['before']} | "
                  f"{'' if c['after'] is None else c['after']} |" for c in f["channels"]]
        lines.append("")
        if note := alignment_note(f):
            lines += [f"Note: {note}.", ""]
    order = rep.get("block_order") or {}
    scores, removed = order.get("scores") or {}, f["removed_blocks"]
    lines += ["## Removed blocks", ""]
    if removed:
        lines += [f"{len(removed)} removed, lowest {order.get('criterion', 'score')} score "
                  "first (the ranking made at collection):", "", "| block | score |",
                  "|---|---|"]
        lines += [f"| {b} | {scores[b]:.4g} |" if b in scores else f"| {b} | |"
                  for b in removed]
    else:
        lines.append("None: every block is kept.")
    return lines + [""]


def _choice(pl: dict | None, final: dict | None) -> list[str]:
    if not pl:
        return []
    sol = pl["solution"]
    c, b = sol["continuous"], sol["best"]
    lat = pl.get("latency")
    dec = sol.get("decision")
    drop = dec.get("max_drop") if dec else None
    if drop is not None:
        kind = (f"the {'fastest on ' + lat['target'] if lat else 'fewest MACs'} within "
                f"{drop:g} points of predicted accuracy")
    elif lat:
        kind = f"latency budget {lat['budget_ms']:.3f} ms on {lat['target']}"
    else:
        kind = f"budget {sol['budget']:g} of the original's MACs"
    lines = [f"## How it was chosen: {kind}", ""]
    if c:
        lines.append(f"Continuous KKT optimum (cost model d w² r²): d={c['d']:.3f} "
                     f"w={c['w']:.3f} r={c['r']:.3f}, predicted {100 * c['predicted']:.2f}%, "
                     f"mu={c['mu']:.4f}.")
    if lat:
        how = {"lut": "per-layer lookup table", "features": "whole-network totals"}.get(
            lat.get("latency_model", "features"), "whole-network totals")
        lines.append(f"Latency model ({how}, measured on the target): held-out median error "
                     f"{100 * (lat['heldout_median_ape'] or 0):.1f}%. At planning time the "
                     f"choice measured {lat['measured']['median_ms']:.3f} ms"
                     + (f" after {len(lat['steps'])} tr{'y' if len(lat['steps']) == 1 else 'ies'}"
                        if lat["steps"] else "")
                     + ("; the final model's verdict is under Result." if final and
                        final.get("latency") else "."))
    lines += ["", "| | d | w | r | px | MACs (M) | ratio | predicted val (%) |",
              "|---|---|---|---|---|---|---|---|"]
    for tag, x in [("**chosen**", b)] + [(_runner_up_tag(y, b, dec), y)
                                          for y in sol["runners_up"]]:
        w = f"{x['w']:.3f}" + (f" (to {x['round_to']}s)" if x.get("round_to") else "")
        lines.append(f"| {tag} | {x['d']:.3f} | {w} | {x['r']:.3f} | "
                     f"{x['resolution']} | {x['macs'] / 1e6:.2f} | {x['macs_ratio']:.3f} | "
                     f"{100 * x['predicted']:.2f} |")
    if drop is not None:
        lines += ["", f"Chosen: {dec['why']} (the uncertainty: jackknife over the "
                  "leave-one-out fits, at least the noise of one validation accuracy)."]
    elif dec:
        a = dec["best_one_axis"]
        lines += ["", f"Best one-axis alternative: {a['name']} (d={a['d']:.3f} "
                  f"w={a['w']:.3f} r={a['r']:.3f}, predicted {100 * a['predicted']:.2f}%). "
                  f"Chosen: {dec['chosen']}, because the {dec['why']} (uncertainty: "
                  "jackknife over the leave-one-out fits, at least the noise of one "
                  "validation accuracy)."]
    return lines + [""]


def _runner_up_tag(y: dict, chosen: dict, decision: dict | None) -> str:
    """What a non-chosen candidate is, truthfully: one the predictor rates higher was
    passed over (by the uncertainty rule, or as measured over a latency budget)."""
    if decision and decision.get("max_drop") is not None:
        return "also within the drop, costlier"
    if y["predicted"] <= chosen["predicted"]:
        return "other candidate (predicted lower)"
    if decision and decision.get("chosen") != "optimum":
        opt = decision.get("optimum") or {}
        if all(abs(opt.get(k, -1) - y[k]) < 1e-9 for k in "dwr"):
            return "predictor's optimum, not taken (gain within the uncertainty)"
        return "predicted higher, not taken (gain within the uncertainty)"
    return "predicted higher, not taken"


def _predictor(p: dict | None) -> list[str]:
    if not p:
        return []
    pr = p["predictor"]
    lines = [f"## Predictor: {pr['name']}", "",
             f"Leave-one-out error on the fitting samples: RMSE "
             f"{100 * pr['loo_rmse']:.2f} points, MAE {100 * pr['loo_mae']:.2f} points. "
             f"Monotone over the sampled box: {pr['monotonicity']['monotone']}."]
    h = p.get("holdout") or {}
    if h.get("count"):
        lines.append(f"On {h['count']} held-out mixed points (not used for fitting): "
                     f"MAE {100 * h['mae']:.2f} points, RMSE {100 * h['rmse']:.2f}.")
    lines += ["", "| candidate | params | LOO RMSE (pts) | monotone |", "|---|---|---|---|"]
    for c in pr["candidates"]:
        name = ("pchip (monotone interpolation)" if c["family"] == "pchip" else
                f"{c['family']} K={c['degree']}"
                + (f" R={c['rank']}" if c["family"] == "cp" else ""))
        lines.append(f"| {name} | {c['n_params']} | {100 * c['loo_rmse']:.2f} | "
                     f"{c['monotone']} |")
    return lines + [""]


def _samples(rep: dict) -> list[str]:
    lines = []
    ax = rep.get("axes")
    if ax:
        d, w, r = ax["depth"], ax["width"], ax["resolution"]
        lines += ["## Axes", "",
                  f"- depth: {d['blocks']} removable blocks ({', '.join(d['kinds'])})"
                  if d["blocks"] else f"- depth: not available ({d['why']})",
                  f"- width: {w['groups']} coupled channel groups" if w["groups"] else
                  f"- width: not available ({w['why']})",
                  f"- resolution: input side {r['min']} to {r['base']} px", ""]
    s = rep["samples"]
    lines += [f"## Samples ({len(s)}, {rep['collection_seconds']:.0f} s of collection)", ""]
    e = rep.get("engine")
    if e:
        path = ("batches made on the compute device" if e["data_path"] >= 2
                else "per-image transforms")
        layout = "channels_last" if e["channels_last"] else "NCHW"
        lines += [f"Trained in {e['precision']}, {layout} layout, data path {e['data_path']} "
                  f"({path}); evaluated in fp32.", ""]
    lines += ["| key | kind | d | w | r | px | MACs (M) | params (K) | val acc (%) | "
              "fine-tune steps | seconds |", "|" + "---|" * 11]
    for x in s:
        lines.append(f"| {x['key']} | {x['kind']} | {x['d']:.3f} | {x['w']:.3f} | "
                     f"{x['r']:.3f} | {x['resolution']} | {x['macs'] / 1e6:.2f} | "
                     f"{x['params'] / 1e3:.1f} | {100 * x['val_acc']:.2f} | "
                     f"{x['finetune_steps']} | {x['seconds']:.0f} |")
    return lines
