"""Latency on the target: where it is measured, and a model L(d, w, r) built from measurements.

Shrinking is fast, so the latency model is fitted to real shrunk models measured on the
target (device, batch size, threads): a design of (d, w, r) points spread over the box, each
shrunk and timed (warm-up, fixed threads, median of repeats) in the target's runtime
(:mod:`dwrprune.cost.runtimes`).  Three kinds of model are fitted to the same measurements,
each a non-negative combination of terms that are exact for any (d, w, r) without building
the model (:meth:`dwrprune.pruning.shrink.Shrinker.structure`):

- ``features``: L = t0 + t_mac * MACs + t_act * output elements + t_wt * weights
  + t_layer * layers;
- ``aligned``: L = t0 + t_a * MACs of layers whose channel counts are all multiples of 8
  + t_u * MACs of the others + t_act * output elements + t_layer * layers: kernels that
  compute channels in blocks of 8 (ONNX Runtime's NCHWc layout, GPU tensor cores) take a
  faster path on aligned layers, so 11 channels can cost more than 16;
- ``lut``: L = t0 + a * (sum of the kept conv and linear layers' times, each layer shape
  timed alone on the target and kept in a lookup table, as NetAdapt and HALP do for width)
  + t_act * output elements + t_layer * layers; the table sees what totals cannot, such as
  where in the network the work sits and channel counts the kernels handle badly.  Where
  the runtime reports its kernels' time (ONNX Runtime's profiler) an entry is the layer's
  own kernels, without the call's overhead and the layout changes a one-layer graph adds.

The kind with the smaller leave-one-out error on the fitted points is kept (``kind="auto"``);
held-out points report every kind's error.  The three axes cost differently on different
targets (depth removes whole layers and their overheads, resolution shrinks activations,
width shrinks both MACs and memory), which is what the fit learns per target.
"""

from __future__ import annotations

import json
import math
import random
import re
import statistics
import weakref
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.optimize import nnls
from torch import nn

from ..errors import DwrpruneError
from .runtimes import layer_repeats, layer_timing
from .timing import (
    check_device,
    measure_latencies,
    quartiles,
    time_in_turns,
    time_layers,
    timing_inputs,
)

if TYPE_CHECKING:  # a Shrinker is what the model is queried with; cost sits below prune
    from ..pruning.shrink import Shrinker

FEATURES = {"features": ("bias", "macs", "activations", "weights", "layers"),
            "lut": ("bias", "layer_table_ms", "activations", "layers"),
            "aligned": ("bias", "aligned_macs", "unaligned_macs", "activations", "layers")}


TOLERANCE = 0.03  # a model measured within budget x (1 + TOLERANCE) meets the budget


_KEY = re.compile(r"^(?:(onnxruntime|cuda-graph)-)?(cpu|cuda)-b(\d+)-t(\d+)$")
# short names for --targets: cpu-b1, ort-b1, cuda-b1, cudagraph-b1 (threads: -t2)
_SHORT = {"cpu": ("torch", "cpu"), "ort": ("onnxruntime", "cpu"),
          "onnxruntime": ("onnxruntime", "cpu"), "cuda": ("torch", "cuda"),
          "cudagraph": ("cuda-graph", "cuda"), "cuda-graph": ("cuda-graph", "cuda")}
_SHORT_RE = re.compile(r"^(" + "|".join(sorted(_SHORT, key=len, reverse=True))
                       + r")-b(\d+)(?:-t(\d+))?$")


@dataclass(frozen=True)
class LatencyTarget:
    """Where latency is measured: runtime (:mod:`dwrprune.cost.runtimes`), device, batch
    size, CPU threads."""

    device: str = "cpu"
    batch: int = 1
    threads: int = 1
    runtime: str = "torch"

    def check(self) -> LatencyTarget:
        """Usable here (runtime installed, device present), or one clear error."""
        from .runtimes import check_runtime

        for name in ("batch", "threads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise DwrpruneError(f"latency {name} must be a whole number >= 1, got {v!r}")
        check_runtime(self.runtime, self.device)
        return self

    def key(self) -> str:
        """``cpu-b1-t1`` (PyTorch), ``onnxruntime-cpu-b1-t1``, ``cuda-graph-cuda-b1-t1``."""
        head = "" if self.runtime == "torch" else f"{self.runtime}-"
        return f"{head}{self.device}-b{self.batch}-t{self.threads}"

    @classmethod
    def from_key(cls, key: str) -> LatencyTarget:
        """The target :meth:`key` names (``cpu-b64-t1``, ``onnxruntime-cpu-b1-t1``)."""
        m = _KEY.match(key) if isinstance(key, str) else None
        if m is None:
            raise DwrpruneError(f"not a latency target key: {key!r} (expected like cpu-b1-t1 "
                                "or onnxruntime-cpu-b1-t1)")
        runtime, device, batch, threads = m.groups()
        return cls(device, int(batch), int(threads), runtime or "torch")

    @classmethod
    def parse(cls, name: str, threads: int = 1) -> LatencyTarget:
        """A target from its short name: ``cpu-b1`` (PyTorch on the CPU), ``ort-b1`` (ONNX
        Runtime), ``cuda-b1`` (PyTorch eager on a GPU), ``cudagraph-b1`` (CUDA graphs);
        ``-tN`` sets the CPU threads (default ``threads``); a full key is accepted too."""
        m = _SHORT_RE.match(name) if isinstance(name, str) else None
        if m is None:
            if isinstance(name, str) and _KEY.match(name):
                return cls.from_key(name)
            raise DwrpruneError(f"unknown latency target {name!r}; write RUNTIME-bBATCH[-tTHREADS] "
                                f"with RUNTIME one of {', '.join(_SHORT)} (like cpu-b1, ort-b1, "
                                "cudagraph-b8)")
        short, batch, t = m.groups()
        runtime, device = _SHORT[short]
        return cls(device, int(batch), int(t) if t else threads, runtime)


@dataclass(frozen=True)
class Reference:
    """The original model and its latency when the budget was set (``ms``).  Timed
    round-robin beside a candidate, it turns the candidate's time into milliseconds of that
    moment: drift in the machine's speed (a shared host) cancels out of a budget check."""

    model: nn.Module
    resolution: int
    ms: float


def measure_ms(model, resolution: int, target: LatencyTarget, repeats: int = 20,
               warmup: int = 5, reference: Reference | None = None) -> dict:
    """Median and quartiles (ms) of ``model`` on ``target``.  With a ``reference``, the
    model and the reference are timed round-robin and the figures scaled by
    ``reference.ms`` over the reference's median now (``ratio``: model / reference)."""
    pairs = [(model, resolution)] + ([(reference.model, reference.resolution)]
                                     if reference is not None else [])
    lat = measure_latencies(pairs, target.batch, threads=target.threads, warmup=warmup,
                            repeats=repeats, device=target.device, runtime=target.runtime)
    if reference is None:
        return {"median_ms": lat[0].median_ms, "p25_ms": lat[0].p25_ms,
                "p75_ms": lat[0].p75_ms}
    mine, ref = lat
    scale = reference.ms / ref.median_ms
    return {"median_ms": mine.median_ms * scale, "p25_ms": mine.p25_ms * scale,
            "p75_ms": mine.p75_ms * scale, "ratio": mine.median_ms / ref.median_ms,
            "raw_median_ms": mine.median_ms, "reference_now_ms": ref.median_ms}


def latency_verdict(model, resolution: int, target: LatencyTarget, reference: Reference,
                    budget_ms: float, by_ratio: bool = True, tolerance: float = TOLERANCE,
                    repeats: int = 20, rounds: int = 3) -> dict:
    """One decision on whether ``model`` meets ``budget_ms`` on ``target``: the model is
    timed round-robin beside the original (``reference``) and the verdict is read from that
    one measurement.  ``by_ratio``: the budget is a fraction of the original's latency, so
    its ratio to the original now is compared with ``budget_ms / reference.ms`` (drift of
    the host cancels); else its own median is compared with ``budget_ms``.  When the budget
    (with its ``tolerance``) lies within two standard errors of the measured median, the
    host was too noisy to decide: the pair is timed again with twice the repeats, at most
    ``rounds`` times, and the last measurement decides (``noisy`` says it still could not).

    Returns the figures and ``line``, the sentence every place that reports it prints."""
    fraction = budget_ms / reference.ms
    n, m, done = repeats, {}, 0
    while done < rounds:
        done += 1
        m = measure_ms(model, resolution, target, n, reference=reference)
        if by_ratio:  # every figure as a fraction of the original now
            value, limit = m["ratio"], fraction
            spread = (m["p25_ms"] / reference.ms, m["p75_ms"] / reference.ms)
        else:
            value, limit = m["raw_median_ms"], budget_ms
            scale = m["raw_median_ms"] / m["median_ms"]
            spread = (m["p25_ms"] * scale, m["p75_ms"] * scale)
        # the median's standard error (from the spread of the timings, ~ IQR / 1.35 sd):
        # undecided while the budget's edge is within two of them of the median
        se = 1.2533 * (spread[1] - spread[0]) / 1.349 / math.sqrt(n)
        noisy = abs(value - limit * (1 + tolerance)) < 2 * se
        if not noisy:
            break
        n *= 2
    over = value / limit - 1
    within = over <= tolerance
    verdict = {"target": target.key(), "budget": fraction, "budget_ms": budget_ms,
               "original_ms": reference.ms, "by_ratio": by_ratio, "value": value,
               "ratio": m["ratio"], "median_ms": m["median_ms"] if by_ratio else value,
               "p25_ms": m["p25_ms"], "p75_ms": m["p75_ms"], "within": within,
               "over_by": over, "tolerance": tolerance, "rounds": done, "noisy": noisy,
               "repeats": n}
    verdict["line"] = verdict_line(verdict)
    return verdict


def speed_line(v: dict) -> str:
    """``latency on cpu-b1-t1: measured 0.45 x 2.51 ms = 1.13 ms, 2.22x faster than the
    original`` (``v``: :func:`measure_ms` beside the original, with ``target`` and
    ``original_ms``)."""
    return (f"latency on {v['target']}: measured {v['ratio']:.2f} x {v['original_ms']:.3g} ms "
            f"= {v['median_ms']:.3g} ms, {1 / v['ratio']:.2f}x faster than the original")


def verdict_line(v: dict) -> str:
    """``latency on cpu-b1-t1: budget 0.60 x 2.51 ms = 1.51 ms -> 0.59 x (1.48 ms), 1.70x
    faster: within budget`` (or ``over budget by 4.2%``), from :func:`latency_verdict`."""
    ms = v["median_ms"]
    ratio = ms / v["original_ms"]
    head = (f"latency on {v['target']}: budget {v['budget']:.2f} x {v['original_ms']:.3g} ms "
            f"= {v['budget_ms']:.3g} ms -> measured {ratio:.2f} x ({ms:.3g} ms), "
            f"{1 / ratio:.2f}x faster than the original: ")
    if v["over_by"] <= 0:
        tail = "within budget"
    elif v["within"]:
        tail = (f"within budget (over by {100 * v['over_by']:.1f}%, inside the "
                f"{100 * v['tolerance']:.0f}% timing tolerance)")
    else:
        tail = f"OVER budget by {100 * v['over_by']:.1f}%"
    if v["noisy"]:
        tail += (f" (too close to call on this host: the budget's edge is within the "
                 f"timing noise after {v['rounds']} measurements)")
    return head + tail


class LayerTable:
    """Per-layer lookup table: the time of each conv and linear layer shape on the target,
    measured alone (median of ``repeats``, default the runtime's ``layer_repeats``) the
    first time a query needs it and kept, so :meth:`total_ms` is a sum of table entries.
    Where the runtime reports its kernels' time (ONNX Runtime's profiler) an entry is that,
    else a wall-clock pass (:func:`dwrprune.cost.timing.time_layers`).  Entries are keyed by
    the layer's full shape (channels, kernel, stride, padding, dilation, groups, bias, input
    size), so a table is valid for any model on its target."""

    def __init__(self, target: LatencyTarget, entries: dict[str, float] | None = None,
                 repeats: int | None = None):
        self.target, self.entries = target, dict(entries or {})
        self.repeats = repeats or layer_repeats(target.runtime)
        self._keys = weakref.WeakKeyDictionary()  # model -> {(layer, cin, cout, px): key}

    def key(self, shr: Shrinker, g, cin: int, cout: int, resolution: int) -> str:
        """The table key of layer ``g`` of ``shr``'s model with ``cin``/``cout`` channels at
        input side ``resolution`` (remembered per model: the solver asks thousands)."""
        memo = self._keys.setdefault(shr.model, {})
        k = memo.get((g.name, cin, cout, resolution))
        if k is None:
            k = memo[g.name, cin, cout, resolution] = self._key(shr, g, cin, cout, resolution)
        return k

    def __getstate__(self) -> dict:  # pickled to workers and copied without the memo
        return {k: v for k, v in self.__dict__.items() if k != "_keys"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _keys=weakref.WeakKeyDictionary())

    @staticmethod
    def _key(shr: Shrinker, g, cin: int, cout: int, resolution: int) -> str:
        mod = shr.model.get_submodule(g.name)
        shape = shr.layer_input(resolution, g.name)
        if g.kind == "linear":
            return json.dumps(["linear", cin, cout, g.positions, mod.bias is not None])
        groups = cin if g.groups > 1 and g.groups == g.in_ch == g.out_ch else g.groups
        return json.dumps(["conv", cin, cout, list(mod.kernel_size), list(mod.stride),
                           mod.padding if isinstance(mod.padding, str) else list(mod.padding),
                           list(mod.dilation), groups, mod.bias is not None,
                           list(shape[-2:])])

    def _call(self, key: str):
        """The layer a key describes, with random weights, and an input for it."""
        kind, cin, cout, *rest = json.loads(key)
        b, dev = self.target.batch, check_device(self.target.device)
        if kind == "linear":
            rows, bias = rest
            layer, x = nn.Linear(cin, cout, bias), torch.randn(b * rows, cin)
        else:
            k, stride, pad, dil, groups, bias, hw = rest
            layer = nn.Conv2d(cin, cout, k, stride, pad, dil, groups, bias)
            x = torch.randn(b, cin, *hw)
        return layer.eval().to(dev), x.to(dev)

    def fill(self, keys) -> None:
        """Time every key not in the table yet, in turns (see :func:`time_in_turns`)."""
        todo = sorted(set(keys) - set(self.entries))
        if todo:
            times = time_layers([self._call(k) for k in todo], self.target.threads,
                                warmup=3, repeats=self.repeats, runtime=self.target.runtime)
            self.entries.update((k, statistics.median(t)) for k, t in zip(todo, times))

    def layer_ms(self, key: str) -> float:
        if key not in self.entries:
            self.fill([key])
        return self.entries[key]

    def keys(self, shr: Shrinker, d: float, w: float, r: float) -> list[str]:
        res, layers = shr.kept_layers(d, w, r)
        return [self.key(shr, g, cin, cout, res) for g, cin, cout in layers]

    def total_ms(self, shr: Shrinker, d: float, w: float, r: float) -> float:
        return sum(self.layer_ms(k) for k in self.keys(shr, d, w, r))


def _features(kind: str, shr: Shrinker, d: float, w: float, r: float,
              table: LayerTable | None) -> np.ndarray:
    s = shr.structure(d, w, r)
    if kind == "lut":
        return np.array([1.0, table.total_ms(shr, d, w, r), s["activations"] / 1e4,
                         s["layers"]], float)
    if kind == "aligned":
        return np.array([1.0, s["aligned_macs"] / 1e6, s["unaligned_macs"] / 1e6,
                         s["activations"] / 1e4, s["layers"]], float)
    return np.array([1.0, s["macs"] / 1e6, s["activations"] / 1e4, s["weights"] / 1e4,
                     s["layers"]], float)


def _fit(A: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares (every cost term adds time), on scaled columns."""
    scale = np.maximum(np.abs(A).max(0), 1e-12)
    coef, _ = nnls(A / scale, y)
    return coef / scale


def _loo_ape(A: np.ndarray, y: np.ndarray) -> float:
    """Median absolute percentage error of leave-one-out refits."""
    idx = np.arange(len(y))
    return float(np.median([abs(A[i] @ _fit(A[idx != i], y[idx != i]) - y[i]) / y[i]
                            for i in idx]))


@dataclass
class LatencyModel:
    """L(d, w, r) in ms for one target and one model (see the module docstring)."""

    target: LatencyTarget
    coef: list[float]
    original_ms: float
    points: list[dict] = field(default_factory=list)  # the measured design (fit + held out)
    heldout_mape: float | None = None
    heldout_median_ape: float | None = None
    kind: str = "features"
    table: LayerTable | None = None
    errors: dict = field(default_factory=dict)  # per kind: LOO and held-out errors
    layer_timing: str = "wall"  # how its lookup table was timed (runtimes.layer_timing)

    def __call__(self, shr: Shrinker, d: float, w: float, r: float) -> float:
        return float(_features(self.kind, shr, d, w, r, self.table) @ np.asarray(self.coef))

    def to_dict(self) -> dict:
        return {"target": asdict(self.target), "kind": self.kind,
                "features": list(FEATURES[self.kind]), "coef": self.coef,
                "original_ms": self.original_ms, "points": self.points,
                "heldout_mape": self.heldout_mape,
                "heldout_median_ape": self.heldout_median_ape, "errors": self.errors,
                "layer_table": None if self.table is None else self.table.entries,
                "layer_timing": self.layer_timing}

    @staticmethod
    def from_dict(d: dict) -> LatencyModel:
        target = LatencyTarget(**d["target"])
        kind = d.get("kind", "features")
        if kind not in FEATURES or len(d["coef"]) != len(FEATURES[kind]):
            raise DwrpruneError(f"latency model of unknown kind {kind!r} or with "
                                f"{len(d['coef'])} coefficients; rebuild it")
        table = LayerTable(target, d.get("layer_table")) if kind == "lut" else None
        return LatencyModel(target, d["coef"], d["original_ms"], d.get("points", []),
                            d.get("heldout_mape"), d.get("heldout_median_ape"), kind, table,
                            d.get("errors", {}), d.get("layer_timing", "wall"))

    def out_of_date(self) -> bool:
        """Made before its runtime's lookup table was timed as it is now (then every kind
        was compared on another table): measure it again."""
        return self.layer_timing != layer_timing(self.target.runtime)

    def check_target(self, target: LatencyTarget) -> None:
        if self.target != target:
            raise DwrpruneError(f"this latency model was built for {self.target.key()}, not "
                                f"{target.key()}; build one for the target (or use its "
                                "settings)")


def _check_kind(kind: str, auto: bool) -> None:
    kinds = (("auto",) if auto else ()) + tuple(FEATURES)
    if kind not in kinds:
        raise DwrpruneError(f"latency model kind must be {', '.join(kinds[:-1])} or "
                            f"{kinds[-1]}; got {kind!r}")


def design(shr: Shrinker, n: int, lower: tuple[float, float, float], seed: int = 0
           ) -> list[tuple[float, float, float]]:
    """``n`` realisable (d, w, r) spread over the box (Latin hypercube, rounded to whole
    blocks and pixels)."""
    rng = random.Random(seed)
    cols = []
    for lo in lower:
        edges = [lo + (1 - lo) * (i + rng.random()) / n for i in range(n)]
        rng.shuffle(edges)
        cols.append(edges)
    nb, px = len(shr.blocks), shr.base_resolution
    pts = []
    for d, w, r in zip(*cols):
        d = max(round(d * nb), 1) / nb if nb else 1.0
        r = max(round(r * px), shr.min_resolution) / px
        pts.append((d, round(w, 4), r))
    return pts


def measure_design(shr: Shrinker, target: LatencyTarget, n_fit: int = 16,
                   n_heldout: int = 10, lower=(0.3, 0.3, 0.5), repeats: int = 20,
                   seed: int = 0, progress=None) -> list[dict]:
    """The original and ``n_fit + n_heldout - 1`` shrunk models spread over the box, each
    measured on ``target`` (no BatchNorm re-calibration: weights do not change timing); rows
    marked ``use`` fit (the first ``n_fit``) or heldout."""
    target.check()
    lower = tuple(max(lo, shr.min_resolution / shr.base_resolution) if i == 2 else lo
                  for i, lo in enumerate(lower))
    pts = [(1.0, 1.0, 1.0)] + design(shr, n_fit + n_heldout - 1, lower, seed)
    models = []
    for d, w, r in pts:
        out = shr.shrink(d, w, r)
        models.append((out.model, out.spec["input"]["resolution"]))
    if progress:
        progress(f"[latency] timing {len(pts)} shrunk models on {target.key()}, "
                 f"{repeats} rounds")
    with timing_inputs(models, target.batch, target.device, shr.in_channels) as calls:
        times = time_in_turns(calls, target.threads, warmup=3, repeats=repeats,
                              runtime=target.runtime)
    rows = []
    for i, ((d, w, r), t) in enumerate(zip(pts, times)):
        p25, p75 = quartiles(t)
        rows.append({"d": d, "w": w, "r": r, **shr.structure(d, w, r),
                     "median_ms": statistics.median(t), "p25_ms": p25, "p75_ms": p75,
                     "use": "fit" if i < n_fit else "heldout"})
    return rows


def fit_latency_model(shr: Shrinker, target: LatencyTarget, rows: list[dict], kind: str,
                      table: LayerTable | None = None) -> LatencyModel:
    """Fit a ``kind`` model to the measured design ``rows``' fit points; its ``errors``
    give the leave-one-out error there and the error on the held-out points."""
    _check_kind(kind, auto=False)
    table = (table or LayerTable(target)) if kind == "lut" else None
    if table is not None:  # every layer shape of the design, timed together
        table.fill([k for x in rows for k in table.keys(shr, x["d"], x["w"], x["r"])])
    fit = [x for x in rows if x["use"] == "fit"]
    held = [x for x in rows if x["use"] == "heldout"]
    A = np.array([_features(kind, shr, x["d"], x["w"], x["r"], table) for x in fit])
    y = np.array([x["median_ms"] for x in fit])
    lm = LatencyModel(target, _fit(A, y).tolist(), rows[0]["median_ms"], rows, kind=kind,
                      table=table, layer_timing=layer_timing(target.runtime))
    err = {"loo_median_ape": _loo_ape(A, y)}
    if held:
        ape = [abs(lm(shr, x["d"], x["w"], x["r"]) - x["median_ms"]) / x["median_ms"]
               for x in held]
        err.update(heldout_median_ape=float(statistics.median(ape)),
                   heldout_mape=float(np.mean(ape)), heldout_worst_ape=float(max(ape)))
        lm.heldout_median_ape, lm.heldout_mape = err["heldout_median_ape"], err["heldout_mape"]
    lm.errors = {kind: err}
    return lm


def build_latency_model(shr: Shrinker, target: LatencyTarget, n_fit: int = 16,
                        n_heldout: int = 10, lower=(0.3, 0.3, 0.5), repeats: int = 20,
                        seed: int = 0, progress=None, kind: str = "auto") -> LatencyModel:
    """:func:`measure_design`, then a model of each kind fitted to it (``kind="auto"``
    keeps the one with the smaller leave-one-out error on the fit points); ``errors`` holds
    every fitted kind's errors."""
    _check_kind(kind, auto=True)
    rows = measure_design(shr, target, n_fit, n_heldout, lower, repeats, seed, progress)
    models = [fit_latency_model(shr, target, rows, k)
              for k in (FEATURES if kind == "auto" else (kind,))]
    best = min(models, key=lambda m: m.errors[m.kind]["loo_median_ape"])
    best.errors = {m.kind: m.errors[m.kind] for m in models}
    return best
