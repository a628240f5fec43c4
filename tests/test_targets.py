"""Latency targets beyond PyTorch on the CPU: runtimes as small objects (PyTorch eager,
ONNX Runtime, CUDA graphs), target names and keys, one collection planned for many targets,
and the fastest model within an accuracy loss (--max-drop)."""

import builtins
import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

import dwrprune
from dwrprune import DwrpruneError
from dwrprune.cli import main
from dwrprune.cost import latency as L
from dwrprune.cost.runtimes import RUNTIMES
from dwrprune.cost.timing import time_in_turns
from dwrprune.io.store import SampleStore
from dwrprune.pipeline import resolve_config
from dwrprune.pipeline.solve import parse_targets
from dwrprune.search.within_drop import Reference, narrowest, solve_max_drop


@pytest.fixture(scope="module")
def shr():
    m = dwrprune.create_model("resnet_tiny2", num_classes=10, in_channels=3)
    m.dwrprune_spec = dwrprune.make_spec("resnet_tiny2", 10, 3, 16)
    return dwrprune.Shrinker(m)


@pytest.mark.parametrize("name, key", [
    ("cpu-b1", "cpu-b1-t1"), ("cpu-b64-t4", "cpu-b64-t4"), ("ort-b1", "onnxruntime-cpu-b1-t1"),
    ("onnxruntime-b8-t2", "onnxruntime-cpu-b8-t2"), ("cuda-b1", "cuda-b1-t1"),
    ("cudagraph-b1", "cuda-graph-cuda-b1-t1"), ("onnxruntime-cpu-b1-t1", "onnxruntime-cpu-b1-t1"),
])
def test_target_names_and_keys_round_trip(name, key):
    t = L.LatencyTarget.parse(name)
    assert t.key() == key and L.LatencyTarget.from_key(key) == t
    # the key names every part, so cached latency models never mix targets
    assert L.LatencyTarget.from_key(L.LatencyTarget("cpu", 1, 1).key()).runtime == "torch"


@pytest.mark.parametrize("text, message", [
    ("tpu-b1", "unknown latency target 'tpu-b1'"),
    ("cpu-b1,ort-b2,cpu-b1", "target cpu-b1-t1 is listed twice"),
    ("cpu", "unknown latency target 'cpu'"),
    (",", "needs at least one target"),
])
def test_bad_targets_are_one_clear_error(text, message):
    with pytest.raises(DwrpruneError, match=message):
        parse_targets(text)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
@pytest.mark.parametrize("name", ["cudagraph-b1", "cuda-b1"])
def test_gpu_targets_without_a_gpu_say_so_before_any_work(name):
    with pytest.raises(DwrpruneError, match="CUDA GPU|no GPU|cuda"):
        parse_targets(name)


def test_onnxruntime_not_installed_names_the_extra(monkeypatch):
    real = builtins.__import__

    def no_ort(name, *a, **k):
        if name == "onnxruntime":
            raise ImportError("no onnxruntime")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ort)
    with pytest.raises(DwrpruneError, match=r"pip install 'dwrprune\[onnx\]'"):
        L.LatencyTarget.parse("ort-b1").check()


def test_onnxruntime_times_the_exported_model_and_agrees_with_torch(shr):
    """The onnxruntime runtime runs the module exported to ONNX (its output is PyTorch's),
    timed in turns like every runtime."""
    import onnxruntime as ort

    from dwrprune.cost.runtimes import onnx_bytes

    m = shr.shrink(0.5, 0.75, 1.0).model.eval()
    x = torch.randn(1, 3, 16, 16)
    sess = ort.InferenceSession(onnx_bytes(m, x), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        assert np.allclose(sess.run(None, {"input": x.numpy()})[0], m(x).numpy(), atol=1e-4)
    times = time_in_turns([(m, x), (shr.model.eval(), x)], repeats=5, runtime="onnxruntime")
    assert [len(t) for t in times] == [5, 5] and all(v > 0 for t in times for v in t)


def test_onnxruntime_layer_times_are_its_kernels_without_the_calls_overhead(tmp_path):
    """A lookup-table entry on ONNX Runtime is the layer's own kernel time from the
    profiler: positive, one per pass, and below the one-layer session's wall clock (which
    adds the call's overhead and the layout changes at the graph's edges)."""
    from dwrprune.cost.runtimes import layer_timing
    from dwrprune.cost.timing import time_layers

    conv, x = nn.Conv2d(16, 16, 3, padding=1).eval(), torch.randn(1, 16, 24, 24)
    kernels = time_layers([(conv, x)], warmup=2, repeats=30, runtime="onnxruntime")[0]
    wall = time_in_turns([(conv, x)], warmup=2, repeats=30, runtime="onnxruntime")[0]
    assert len(kernels) == 30 and min(kernels) > 0
    assert np.median(kernels) < np.median(wall)
    assert layer_timing("onnxruntime") == "kernel" and layer_timing("torch") == "wall"
    table = L.LayerTable(L.LatencyTarget(runtime="onnxruntime"))
    assert table.repeats == RUNTIMES.get("onnxruntime").layer_repeats > \
        L.LayerTable(L.LatencyTarget()).repeats == 10


def test_kernel_times_per_run_from_an_onnxruntime_profile(tmp_path):
    """Each run's kernel time is the sum of its nodes' kernel events, layout changes left
    out; events outside a run (session set-up) count for none."""
    from dwrprune.cost.runtimes import kernel_ms_per_run

    def node(ts, dur, op):
        return {"cat": "Node", "name": f"n{ts}_kernel_time", "ts": ts, "dur": dur,
                "args": {"op_name": op}}

    events = [node(1, 50, "Conv"),  # before any run: session initialisation
              {"cat": "Session", "name": "model_run", "ts": 100, "dur": 90},
              node(110, 5, "ReorderInput"), node(120, 40, "Conv"), node(165, 3, "Gemm"),
              node(170, 5, "ReorderOutput"),
              {"cat": "Session", "name": "model_run", "ts": 300, "dur": 60},
              node(305, 20, "Conv"), {"cat": "Node", "name": "n_fence_before", "ts": 310,
                                      "dur": 9, "args": {"op_name": "Conv"}}]
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(events))
    assert kernel_ms_per_run(str(path), ("ReorderInput", "ReorderOutput")) == \
        pytest.approx([0.043, 0.020])
    assert kernel_ms_per_run(str(path)) == pytest.approx([0.053, 0.020])


def test_a_profile_without_run_events_is_one_clear_error(monkeypatch):
    """A profile of another format (no run events) is one error, never an empty table."""
    from dwrprune.cost import runtimes

    monkeypatch.setattr(runtimes, "kernel_ms_per_run", lambda *a, **k: [])
    with pytest.raises(DwrpruneError, match="profile does not give each run's kernel times"):
        runtimes.OnnxRuntime().time_kernels(
            [(nn.Conv2d(2, 2, 1).eval(), torch.randn(1, 2, 4, 4))], 1, 1, 2)


def test_a_latency_model_whose_table_was_timed_otherwise_is_measured_again(shr, monkeypatch,
                                                                          tmp_path):
    """A cached ONNX Runtime model from when its lookup table was timed wall-clock is out of
    date (every kind was compared on another table); a PyTorch one is not."""
    from dwrprune.pipeline import solve
    from dwrprune.pipeline.run import Run

    ort_t, cpu_t = L.LatencyTarget(runtime="onnxruntime"), L.LatencyTarget()
    old = {"target": {"device": "cpu", "batch": 1, "threads": 1, "runtime": "onnxruntime"},
           "kind": "aligned", "coef": [0.1, 0.0, 0.0, 0.0, 0.0], "original_ms": 1.0,
           "errors": {k: {"loo_median_ape": 0.1} for k in L.FEATURES}}
    assert L.LatencyModel.from_dict(old).out_of_date()
    assert not L.LatencyModel.from_dict({**old, "target": {**old["target"],
                                                          "runtime": "torch"}}).out_of_date()
    run = Run(tmp_path)
    (tmp_path / "latency").mkdir()
    (tmp_path / "latency" / f"{ort_t.key()}.json").write_text(json.dumps(old))
    fresh = L.LatencyModel(ort_t, [0.2, 0, 0, 0, 0], 1.0, kind="aligned",
                           layer_timing="kernel")
    built = []
    monkeypatch.setattr(L, "build_latency_model",
                        lambda *a, **k: built.append(a[1]) or fresh)
    assert solve.latency_model_for(run, shr, ort_t) is fresh and built == [ort_t]
    again = solve.latency_model_for(run, shr, ort_t)  # the new one is cached and current
    assert again.coef == fresh.coef and built == [ort_t] and not again.out_of_date()
    assert cpu_t.key() != ort_t.key()


def test_a_target_that_pays_per_layer_gets_depth_alone(shr):
    """A GPU at batch 1 in eager mode pays per kernel launched, not per MAC: on a target
    whose latency model puts all the time on the layer count (as one fitted to such timings
    does), a latency budget is met by removing blocks, keeping the full width and input,
    which cost accuracy there and buy no time."""
    from dwrprune.search.latency import solve_latency

    launches = L.LatencyModel(L.LatencyTarget("cuda", 1, 1), [0.0, 0.0, 0.0, 0.0, 0.05],
                              1.0, kind="features")
    full = launches(shr, 1, 1, 1)
    assert launches(shr, 1, 0.5, 0.5) == full  # width and resolution buy nothing there

    def pred(d, w, r):
        return 0.9 - 0.02 * (1 - d) - 0.04 * (1 - w) - 0.03 * (1 - r)

    best = solve_latency(pred, shr, launches, 0.8 * full, (0.25, 0.25, 0.5))["best"]
    assert best["d"] < 1 and best["w"] == 1 and best["r"] == 1
    assert launches(shr, best["d"], 1, 1) <= 0.8 * full


def test_a_model_onnx_cannot_export_is_named(monkeypatch):
    from dwrprune.cost.runtimes import onnx_bytes

    class Odd(nn.Module):
        def forward(self, x):
            return torch.fft.fft2(x).abs()  # complex intermediates: no ONNX export

    def refuse(*a, **k):
        raise RuntimeError("Exporting the operator 'aten::fft_fft2' to ONNX is not supported")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    with pytest.raises(DwrpruneError, match="Odd cannot be exported to ONNX.*aten::fft_fft2"):
        onnx_bytes(Odd(), torch.zeros(1, 1, 4, 4))


def test_a_runtime_is_one_small_class(shr):
    """A new runtime registers with a name, its devices, check and prepare; the latency
    model, the lookup table and the verdict all time through it."""
    calls = []

    @RUNTIMES.register
    class Counting:
        name = "counting"
        devices = ("cpu",)

        def check(self, device):
            pass

        def prepare(self, module, x, threads):
            def run():
                calls.append(x.shape[-1])
                module(x)
            return run

    try:
        t = L.LatencyTarget("cpu", 1, 1, "counting").check()
        assert t.key() == "counting-cpu-b1-t1" or t.key().startswith("counting")
        lm = L.build_latency_model(shr, t, n_fit=6, n_heldout=2, repeats=2, kind="lut")
        assert calls and lm.target.runtime == "counting" and lm.layer_timing == "wall"
    finally:
        RUNTIMES.unregister("counting")


def test_a_runtime_that_reports_kernel_times_fills_the_lookup_table(shr):
    """A runtime with ``time_kernels`` fills the lookup table from it (here: a layer's
    time is its output channels), and the latency model records that it did."""

    @RUNTIMES.register
    class Kernels:
        name = "kernels"
        devices = ("cpu",)
        layer_repeats = 3

        def check(self, device):
            pass

        def prepare(self, module, x, threads):
            return lambda: module(x)

        def time_kernels(self, calls, threads, warmup, repeats):
            assert repeats == 3
            return [[float(getattr(m, "out_channels", getattr(m, "out_features", 0)))] * repeats
                    for m, _ in calls]

    try:
        t = L.LatencyTarget("cpu", 1, 1, "kernels")
        table = L.LayerTable(t)
        res, layers = shr.kept_layers(1, 0.5, 1)
        assert table.total_ms(shr, 1, 0.5, 1) == sum(cout for _, _, cout in layers)
        lm = L.build_latency_model(shr, t, n_fit=6, n_heldout=2, repeats=2, kind="lut")
        assert lm.layer_timing == "kernel" and not lm.out_of_date()
        assert L.LatencyModel.from_dict(lm.to_dict()).layer_timing == "kernel"
    finally:
        RUNTIMES.unregister("kernels")


# ---------------------------------------------------------------------------- max drop
class _Pred:
    """Accuracy falls linearly along each axis; a fixed uncertainty."""

    lower = (0.25, 0.25, 0.5)

    def __init__(self, sd=0.001):
        self.sd = sd

    def __call__(self, d, w, r):
        return 0.9 - 0.02 * (1 - d) - 0.04 * (1 - w) - 0.03 * (1 - r)

    def gain(self, a, b):
        return self(*a) - self(*b), self.sd


def test_narrowest_width_within_a_drop():
    assert narrowest(lambda w: w >= 0.6, 0.25) == pytest.approx(0.6, abs=1e-3)
    assert narrowest(lambda w: True, 0.25) == 0.25
    assert narrowest(lambda w: False, 0.25) is None


def test_fewest_macs_within_the_drop_and_hedged_by_the_uncertainty(shr):
    res = solve_max_drop(_Pred(), shr, 1.0, (0.25, 0.25, 0.5))
    b = res["best"]
    assert res["minimised"] == "macs" and 100 * (b["drop"] + b["drop_sd"]) <= 1.0 + 1e-6
    assert all(c["macs"] >= b["macs"] for c in res["runners_up"])
    # a larger uncertainty leaves less room: the choice costs more
    hedged = solve_max_drop(_Pred(sd=0.005), shr, 1.0, (0.25, 0.25, 0.5))["best"]
    assert hedged["macs"] > b["macs"]
    with pytest.raises(DwrpruneError, match="uncertainty is 2.00 points"):
        solve_max_drop(_Pred(sd=0.02), shr, 1.0, (0.25, 0.25, 0.5))
    # within a drop only the original reaches: the original is never the answer
    with pytest.raises(DwrpruneError, match="no pruned model is predicted within 0.1 points"):
        solve_max_drop(_Pred(sd=0.0), shr, 0.1, (1.0, 1.0, 1.0))


def test_a_reference_counts_the_drop_from_the_briefly_fine_tuned_original(shr):
    """The brief fine-tune's own cost (the reference's shortfall) is taken out of the
    predicted drop, its noise is added to the sd; a reference that gains is no shortfall."""
    base = solve_max_drop(_Pred(), shr, 1.0, (0.25, 0.25, 0.5))["best"]
    ref = Reference(shortfall=0.004, sd=0.001)
    res = solve_max_drop(_Pred(), shr, 1.0, (0.25, 0.25, 0.5), reference=ref)
    b = res["best"]
    assert res["reference"] == {"shortfall": 0.004, "sd": 0.001}
    assert b["drop"] == pytest.approx(0.9 - _Pred()(b["d"], b["w"], b["r"]) - 0.004)
    assert b["drop_sd"] == pytest.approx((0.001 ** 2 + 0.001 ** 2) ** 0.5)
    assert 100 * (b["drop"] + b["drop_sd"]) <= 1.0 + 1e-6 and b["macs"] < base["macs"]
    # a noisy reference costs room: with sd as large as the shortfall nothing is gained
    noisy = solve_max_drop(_Pred(), shr, 1.0, (0.25, 0.25, 0.5),
                           reference=Reference(0.004, 0.006))["best"]
    assert noisy["macs"] > b["macs"]
    assert Reference.measured(0.90, 0.93, 6000).shortfall == 0.0
    m = Reference.measured(0.94, 0.936, 6000)
    assert m.shortfall == pytest.approx(0.004)
    assert m.sd == pytest.approx((0.936 * 0.064 / 6000) ** 0.5)  # without pairs: one accuracy
    assert Reference.measured(0.94, 0.936, 6000, paired_sd=0.001).sd == 0.001


def test_paired_noise_of_two_models_on_the_same_images():
    """McNemar's variance: two models that disagree on few images differ with little noise;
    identical models with none."""
    from dwrprune.training.engine import PairedResult, evaluate

    p = PairedResult(count=6000, only_a=40, only_b=16)
    assert p.difference_sd() == pytest.approx((56 - 24 ** 2 / 6000) ** 0.5 / 6000)
    assert p.difference_sd() < (0.94 * 0.06 / 6000) ** 0.5 / 2
    torch.manual_seed(0)
    a = dwrprune.create_model("resnet_tiny", num_classes=10, in_channels=3)
    b = copy.deepcopy(a)
    loader = dwrprune.make_loader(dwrprune.create_dataset("synthetic", "val"), 32)
    same = evaluate(b, loader, against=a).paired  # one pass: a = against, b = the model
    assert (same.only_a, same.only_b, same.difference_sd()) == (0, 0, 0.0)
    assert same.count == len(loader.dataset)
    with torch.no_grad():
        b.fc.weight.mul_(-1.0)
    other = evaluate(b, loader, against=a).paired
    acc = [dwrprune.evaluate(m, loader).accuracy for m in (a, b)]
    assert (other.only_a - other.only_b) / other.count == pytest.approx(acc[0] - acc[1])


def test_max_drop_plans_a_reference_job(tmp_path):
    from dwrprune.pipeline.jobs import job_steps, plan_jobs

    cfg = resolve_config("quick")
    assert "ref" not in [j.key for j in plan_jobs(cfg, 9, 28, 8)]
    jobs = plan_jobs(cfg.replace(max_drop=0.5), 9, 28, 8)
    ref = next(j for j in jobs if j.key == "ref")
    assert ref.kind == "reference" and ref.point == (1.0, 1.0, 1.0)
    assert job_steps(ref, cfg) == cfg.finetune_steps


@pytest.mark.parametrize("opts, message", [
    ({"max_drop": -1.0}, "max_drop must be points"),
    ({"max_drop": float("nan")}, "max_drop must be points"),
    ({"max_drop": 0.5, "budget": 0.5}, "cannot go with a budget"),
    ({"max_drop": 0.5, "latency_budget": 0.5}, "cannot go with a budget"),
    ({"runtime": "tensorrt"}, "runtime must be one of torch, onnxruntime, cuda-graph"),
    ({"minimize": "params"}, "minimize must be one of latency, macs"),
])
def test_max_drop_and_runtime_options_are_checked(opts, message):
    with pytest.raises(DwrpruneError, match=message):
        resolve_config(None, **opts)


def test_max_drop_from_the_cli_is_checked_before_any_work(tmp_path, capsys):
    assert main(["prune", "--max-drop", "abc", "--out", str(tmp_path / "r")]) == 2
    assert "--max-drop" in capsys.readouterr().err
    assert main(["prune", "--max-drop", "0.5", "--budget", "0.5", "--out",
                 str(tmp_path / "r")]) == 2
    assert "cannot go with a budget" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_max_drop_and_many_targets_from_one_collection(tmp_path, tiny_checkpoint, tiny_options,
                                                       capsys):
    """--max-drop (fewest MACs) through the pipeline, with the drop predicted and measured
    in final.json; then the same collection planned for two targets at two budgets."""
    opts = {k: v for k, v in tiny_options.items() if k not in ("data", "budget")}
    res = dwrprune.prune(dwrprune.load(tiny_checkpoint), "synthetic", out=tmp_path / "run",
                         progress="never", max_drop=30.0, minimize="macs",
                         checkpoint=str(tiny_checkpoint), **opts)
    md = res.report["max_drop"]
    assert md["allowed"] == 30.0 and md["predicted_drop"] + md["drop_sd"] <= 30.0 + 1e-6
    assert {"val_drop", "test_drop"} <= set(md) and res.report["macs_ratio"] < 1.0
    assert "Allowed drop 30 points" in res.report_path.read_text()
    # the collection holds the reference (the original, fine-tuned as briefly), which the
    # drop is counted from; the predictor is not fitted to it
    store = dwrprune.pipeline.Run(tmp_path / "run").store()
    ref, orig = store.get("ref"), store.get("orig")
    assert ref.kind == "reference" and ref.finetune_steps > 0 and (ref.d, ref.w, ref.r) == (1, 1, 1)
    assert md["reference_shortfall"] == pytest.approx(100 * max(0.0, orig.val_acc - ref.val_acc))
    pair = store.get_meta("reference_paired")  # its noise: the paired difference's
    assert pair["count"] == store.get_meta("val_images")
    assert abs(pair["only_a"] - pair["only_b"]) == round(abs(orig.val_acc - ref.val_acc)
                                                         * pair["count"])
    from dwrprune.pipeline.solve import drop_reference

    assert drop_reference(res.run).sd == pytest.approx(
        dwrprune.training.engine.PairedResult(**pair).difference_sd())
    assert "fine-tuned as briefly as the samples" in res.report_path.read_text()
    fitted = json.loads((tmp_path / "run" / "predictor.json").read_text())["predictor"]
    assert "orig" in json.dumps(fitted) and '"ref"' not in json.dumps(fitted)
    capsys.readouterr()
    assert main(["plan", "--run", str(tmp_path / "run"), "--targets", "cpu-b1,ort-b1",
                 "--latency-budgets", "0.85,0.95"]) == 0
    out = capsys.readouterr().out
    rows = json.loads((tmp_path / "run" / "plans.json").read_text())
    assert sorted((r["latency"]["target"], round(r["budget"], 3)) for r in rows) == [
        ("cpu-b1-t1", 0.85), ("cpu-b1-t1", 0.95), ("onnxruntime-cpu-b1-t1", 0.85),
        ("onnxruntime-cpu-b1-t1", 0.95)]
    assert "onnxruntime-cpu-b1-t1" in out
    for key in ("cpu-b1-t1", "onnxruntime-cpu-b1-t1"):  # one latency model per target
        assert (tmp_path / "run" / "latency" / f"{key}.json").is_file()
    # each row carries the one-axis trade-offs on its target; the report draws them
    assert {"depth", "width", "resolution"} <= set(rows[0]["latency"]["curves"])
    assert main(["report", "--run", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "report" / "targets.png").is_file()
    assert "## Latency targets" in (tmp_path / "run" / "report" / "report.md").read_text()
    # the run's own plan (the max-drop choice) is left as it was
    plan = dwrprune.pipeline.Run(tmp_path / "run").plan()
    assert plan["solution"]["decision"]["max_drop"] == 30.0


@pytest.mark.slow
def test_fastest_within_a_drop_on_a_latency_target(tmp_path, tiny_checkpoint, tiny_options,
                                                   macs_timing):
    """--max-drop on a latency target: the candidates the latency model ranks fastest are
    measured beside the original, the fastest measured is taken, and final.json says how
    fast it is and how much it dropped.  (Timing made deterministic: time = MACs.)"""
    model = dwrprune.load(tiny_checkpoint)
    macs_timing(model)
    opts = {k: v for k, v in tiny_options.items() if k not in ("data", "budget")}
    res = dwrprune.prune(model, "synthetic", out=tmp_path / "run", progress="never",
                         max_drop=30.0, runtime="onnxruntime", checkpoint=str(tiny_checkpoint),
                         **opts)
    lat, plan = res.report["latency"], res.run.plan()
    assert lat["target"] == "onnxruntime-cpu-b1-t1" and lat["ratio"] < 1.0
    assert lat["line"].startswith("latency on onnxruntime-cpu-b1-t1: measured ")
    assert plan["latency"]["budget_ms"] is None and plan["solution"]["decision"]["max_drop"] == 30
    assert res.report["max_drop"]["predicted_drop"] + res.report["max_drop"]["drop_sd"] <= 30 + 1e-6
    assert lat["line"] in res.report_path.read_text()


@pytest.mark.slow
def test_a_budget_beyond_the_sampled_box_extends_a_chain(tmp_path, tiny_checkpoint,
                                                        tiny_options, macs_timing, capsys):
    """A latency budget no sampled point reaches: the collection is extended along the axis
    that reaches it (new chain samples, recorded in the run's config), refitted, planned and
    fine-tuned within budget; running the same call again keeps the extension.  A budget the
    model itself cannot reach is one error naming its fastest point."""
    model = dwrprune.load(tiny_checkpoint)
    macs_timing(model)
    opts = {k: v for k, v in tiny_options.items() if k not in ("data", "budget")}
    run = tmp_path / "run"
    res = dwrprune.prune(model, "synthetic", out=run, progress="never", latency_budget=0.02,
                         checkpoint=str(tiny_checkpoint), **opts)
    assert "lies beyond the sampled box; extending the collection along" in \
        capsys.readouterr().out
    assert res.report["latency"]["ratio"] <= 0.02 * 1.03
    cfg, _ = dwrprune.pipeline.Run(run).load_config()
    longer = [k for k in ("depth_steps", "width_steps", "resolution_steps")
              if len(getattr(cfg, k)) > len(opts[k])]
    assert len(longer) == 1
    samples = {s.key for s in SampleStore(run / "samples.sqlite").samples()}
    axis = longer[0][0]
    assert f"{axis}/2" in samples  # a chain step past the two the config asked for
    # the same call again: the extension is kept, nothing is re-collected
    dwrprune.prune(model, "synthetic", out=run, progress="never", latency_budget=0.02,
                   checkpoint=str(tiny_checkpoint), **opts)
    assert {s.key for s in SampleStore(run / "samples.sqlite").samples()} == samples
    with pytest.raises(DwrpruneError, match="the model itself cannot go that fast: its "
                                            "fastest point, d=.* is modelled at"):
        dwrprune.prune(model, "synthetic", out=tmp_path / "run2", progress="never",
                       latency_budget=1e-4, checkpoint=str(tiny_checkpoint), **opts)


def test_a_chain_continued_further_down_is_the_same_collection():
    from dwrprune.io.settings import differing, extends

    assert extends([0.75, 0.5, 0.3], [0.75, 0.5]) and not extends([0.75, 0.5], [0.75, 0.5])
    assert not extends([0.75, 0.6, 0.3], [0.75, 0.5])  # another step on the way
    assert not extends([0.75, 0.5, 0.6], [0.75, 0.5])  # not further down
    old = {"depth_steps": [0.75, 0.5], "width_steps": [0.75], "seed": 0}
    assert differing(old, {**old, "depth_steps": [0.75, 0.5, 0.25]}) == []
    assert differing({**old, "depth_steps": [0.75, 0.5, 0.25]}, old) == []  # and back
    assert differing(old, {**old, "depth_steps": [0.7, 0.5]}) == ["depth_steps"]
    assert differing(old, {**old, "seed": 1}) == ["seed"]


def test_fastest_within_the_drop_weighs_rounded_widths(shr, aligned_latency_model):
    """On a target that runs channel counts off 4 at half speed, the fastest model within
    the drop is a rounded one: its drop is predicted at the unrounded width of equal MACs."""
    from dwrprune.search.latency import equivalent_width

    lm = aligned_latency_model()
    lo = (1.0, 0.25, 1.0)
    plain = solve_max_drop(_Pred(), shr, 1.5, lo, lm)["best"]
    res = solve_max_drop(_Pred(), shr, 1.5, lo, lm, round_to=4)
    b = res["best"]
    assert plain["round_to"] is None and b["round_to"] == 4
    assert b["latency_ms"] < plain["latency_ms"]
    eq = equivalent_width(shr, shr.rounded(4), 1, b["w"], 1, lo[1])
    assert b["predicted"] == pytest.approx(_Pred()(1, eq, 1))
    assert 100 * (b["drop"] + b["drop_sd"]) <= 1.5 + 1e-6
    # without a latency model (fewest MACs) nothing is rounded
    assert solve_max_drop(_Pred(), shr, 1.5, lo, round_to=4)["best"]["round_to"] is None
