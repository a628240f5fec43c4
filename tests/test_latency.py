"""Latency budgets: the structure a latency model is fitted on, the model, the choice under a
latency budget (stepped down when the measured latency overshoots) and bad input."""

import copy
import json
import pickle

import pytest
import torch
from torch import nn

import dwrprune
from dwrprune import DwrpruneError
from dwrprune.cost import latency as L
from dwrprune.pipeline import PipelineConfig, resolve_config
from dwrprune.search import latency as S


@pytest.fixture(scope="module")
def shr():
    m = dwrprune.create_model("resnet_tiny2", num_classes=10, in_channels=3)
    m.dwrprune_spec = dwrprune.make_spec("resnet_tiny2", 10, 3, 16)
    return dwrprune.Shrinker(m)


@pytest.mark.parametrize("point", [(1, 1, 1), (0.5, 0.5, 0.75), (0.75, 0.7, 1.0)])
def test_structure_is_exact_on_the_shrunk_model(shr, point):
    out = shr.shrink(*point)
    acts, weights, layers = [], [], []

    def hook(mod, args, y):
        acts.append(y[0].numel())
        weights.append(mod.weight.numel())
        layers.append(1)

    for m in out.model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.register_forward_hook(hook)
    res = out.spec["input"]["resolution"]
    out.model(torch.zeros(1, 3, res, res))
    s = shr.structure(*point)
    assert (s["activations"], s["weights"], s["layers"]) == (sum(acts), sum(weights),
                                                              len(layers))
    assert s["macs"] == out.macs
    # every layer's MACs fall on one side: channels all multiples of 8, or not
    assert s["aligned_macs"] + s["unaligned_macs"] == s["macs"]
    convs = [m for m in out.model.modules() if isinstance(m, nn.Conv2d)]
    if all(m.in_channels % 8 == 0 and m.out_channels % 8 == 0 for m in convs[1:]):
        assert s["aligned_macs"] > 0


@pytest.mark.parametrize("kind", ["auto", "features", "lut", "aligned"])
def test_latency_model_fits_and_reports_held_out_error(shr, kind):
    lm = L.build_latency_model(shr, L.LatencyTarget(), n_fit=8, n_heldout=4, repeats=3,
                               kind=kind)
    assert len(lm.points) == 12 and lm.heldout_mape is not None
    kinds = ["aligned", "features", "lut"] if kind == "auto" else [kind]
    assert sorted(lm.errors) == kinds and lm.kind in kinds
    assert lm.errors[lm.kind]["loo_median_ape"] == min(e["loo_median_ape"]
                                                       for e in lm.errors.values())
    assert lm.heldout_median_ape == lm.errors[lm.kind]["heldout_median_ape"]
    assert len(lm.coef) == len(L.FEATURES[lm.kind])
    assert all(c >= 0 for c in lm.coef)  # every cost term adds time
    value = lm(shr, 0.5, 0.6, 0.75)  # a lut model times the new layer shapes and keeps them
    again = L.LatencyModel.from_dict(json.loads(json.dumps(lm.to_dict())))
    assert again.kind == lm.kind and again(shr, 0.5, 0.6, 0.75) == pytest.approx(value)
    with pytest.raises(DwrpruneError, match="built for cpu-b1-t1, not cpu-b64-t1"):
        again.check_target(L.LatencyTarget("cpu", 64, 1))


def test_layer_table_times_each_kept_layer_shape_once(shr):
    table = L.LayerTable(L.LatencyTarget(), repeats=5)  # median of 5: robust to a busy machine
    res, layers = shr.kept_layers(0.5, 0.5, 0.75)
    out = shr.shrink(0.5, 0.5, 0.75)
    convs = [m for m in out.model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == len(convs) and res == out.spec["input"]["resolution"]
    for g, cin, cout in layers:  # the shrunk model keeps the names of the layers it keeps
        m = out.model.get_submodule(g.name)
        assert (cin, cout) == ((m.in_channels, m.out_channels) if isinstance(m, nn.Conv2d)
                               else (m.in_features, m.out_features))
    total = table.total_ms(shr, 0.5, 0.5, 0.75)
    keys = {table.key(shr, g, cin, cout, res) for g, cin, cout in layers}
    for twin in (pickle.loads(pickle.dumps(table)), copy.deepcopy(table)):  # to workers
        assert twin.entries == table.entries and twin.keys(shr, 0.5, 0.6, 0.75) == \
            table.keys(shr, 0.5, 0.6, 0.75)
    assert set(table.entries) == keys and total > 0
    # a second query of the same point reads the table: same sum, nothing timed again
    before = dict(table.entries)
    assert table.total_ms(shr, 0.5, 0.5, 0.75) == total and table.entries == before
    # the full model has more and larger layers: its sum is larger
    assert L.LayerTable(L.LatencyTarget(), repeats=5).total_ms(shr, 1, 1, 1) > total


def test_lookup_table_times_depthwise_layers_as_the_shrunk_model_has_them():
    m = dwrprune.create_model("mobilenetv2_tiny", num_classes=10, in_channels=3)
    m.dwrprune_spec = dwrprune.make_spec("mobilenetv2_tiny", 10, 3, 16)
    shr = dwrprune.Shrinker(m)
    out = shr.shrink(0.5, 0.6, 0.75)
    res, layers = shr.kept_layers(0.5, 0.6, 0.75)
    depthwise = [(g, cin, cout) for g, cin, cout in layers if g.groups > 1]
    assert depthwise
    for g, cin, cout in depthwise:  # kept channels in = out = groups, as built
        conv = out.model.get_submodule(g.name)
        assert (cin, cout) == (conv.in_channels, conv.out_channels) == (conv.groups,) * 2
    table = L.LayerTable(L.LatencyTarget(), repeats=2)
    assert table.total_ms(shr, 0.5, 0.6, 0.75) > 0  # every layer shape builds and runs


def test_latency_model_kind_is_checked(shr):
    with pytest.raises(DwrpruneError, match="kind must be auto, features, lut or aligned"):
        L.build_latency_model(shr, L.LatencyTarget(), kind="table")
    bad = {"target": {"device": "cpu", "batch": 1, "threads": 1}, "kind": "lut",
           "coef": [1.0], "original_ms": 1.0}
    with pytest.raises(DwrpruneError, match="rebuild it"):
        L.LatencyModel.from_dict(bad)


def _fake_model(shr):
    """Latency proportional to MACs (1 ms for the original): deterministic for tests."""
    base = shr.macs(1, 1, 1) / 1e6
    return L.LatencyModel(L.LatencyTarget(), [0.0, 1 / base, 0, 0, 0], 1.0)


def test_choice_under_latency_steps_down_when_measurement_overshoots(shr, monkeypatch):
    lm = _fake_model(shr)
    calls = []

    def measure(model, res, target, repeats=20, warmup=5, reference=None):
        ms = dwrprune.count_macs(model, res, 3) / shr.macs(1, 1, 1)
        ms *= 1.6 if not calls else 1.0  # the first measurement is 60% over the model
        calls.append(ms)
        return {"median_ms": ms, "p25_ms": ms, "p75_ms": ms}

    monkeypatch.setattr(S, "measure_ms", measure)
    pred = lambda d, w, r: d + w + r  # noqa: E731
    res = S.choose_under_latency(pred, shr, lm, 0.5, (0.25, 0.25, 0.5))
    assert res["steps"][0]["median_ms"] > 0.5 * 1.03
    # never again at or past a modelled budget measured over
    assert all(s["model_budget_ms"] < 0.5 for s in res["steps"][1:])
    assert res["measured"]["median_ms"] <= 0.5 * 1.03
    sol = S.solve_latency(pred, shr, lm, 0.5, (0.25, 0.25, 0.5))
    assert sol["best"]["latency_ms"] <= 0.5
    assert all(c["predicted"] <= sol["best"]["predicted"] for c in sol["runners_up"])
    with pytest.raises(DwrpruneError, match="no model in the searched box reaches"):
        S.solve_latency(pred, shr, lm, 0.001, (0.25, 0.25, 0.5))


def test_choice_under_latency_steps_up_when_the_model_overrates_latency(shr, monkeypatch):
    lm = _fake_model(shr)  # the target runs everything at 60% of the modelled time

    def measure(model, res, target, repeats=20, warmup=5, reference=None):
        ms = 0.6 * dwrprune.count_macs(model, res, 3) / shr.macs(1, 1, 1)
        return {"median_ms": ms, "p25_ms": ms, "p75_ms": ms}

    monkeypatch.setattr(S, "measure_ms", measure)
    pred = lambda d, w, r: d + w + r  # noqa: E731
    res = S.choose_under_latency(pred, shr, lm, 0.5, (0.25, 0.25, 0.5))
    first = res["steps"][0]
    assert first["median_ms"] < 0.5 * 0.97  # the model's own choice gives time away
    assert max(s["model_budget_ms"] for s in res["steps"]) > 0.5  # so it stepped up
    assert first["median_ms"] < res["measured"]["median_ms"] <= 0.5 * 1.03
    assert res["best"]["predicted"] > pred(first["d"], first["w"], first["r"])


def test_measure_beside_a_reference_scales_to_the_reference_time(shr):
    small = shr.shrink(0.5, 0.5, 0.75).model.train()
    shr.model.eval()
    ref = L.Reference(shr.model, shr.base_resolution, ms=10.0)
    m = L.measure_ms(small, 12, L.LatencyTarget(), repeats=3, warmup=1, reference=ref)
    assert m["ratio"] > 0 and m["median_ms"] == pytest.approx(10.0 * m["ratio"])
    assert m["median_ms"] == pytest.approx(m["raw_median_ms"] * 10.0 / m["reference_now_ms"])
    assert m["p25_ms"] <= m["median_ms"] <= m["p75_ms"]
    assert small.training and not shr.model.training  # each model's mode is given back


@pytest.mark.parametrize("opts,match", [
    ({"latency_budget": 0.5, "latency_ms": 3.0}, "not both"),
    ({"latency_budget": 1.5}, "latency_budget must be in"),
    ({"latency_ms": -1.0}, "latency_ms must be > 0"),
    ({"latency_budget": 0.5, "threads": 0}, r"threads must be in \[1, 256\]"),
    ({"latency_budget": 0.5, "device": "tpu"}, "device must be one of"),
    ({"latency_budget": 0.5, "budget": 0.4}, "give one budget"),
])
def test_bad_latency_options(opts, match):
    with pytest.raises(DwrpruneError, match=match):
        resolve_config("quick", **opts)


@pytest.mark.parametrize("target", [L.LatencyTarget(), L.LatencyTarget("cuda", 64, 4)])
def test_target_key_round_trips(target):
    assert L.LatencyTarget.from_key(target.key()) == target


@pytest.mark.parametrize("key", ["cpu", "cpu-b1", "cpu-bx-t1", "-b1-t1", "macs"])
def test_bad_target_key_is_a_clear_error(key):
    with pytest.raises(DwrpruneError, match="not a latency target key"):
        L.LatencyTarget.from_key(key)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a CPU machine")
def test_cuda_target_without_a_gpu_is_a_clear_error():
    with pytest.raises(DwrpruneError, match="no CUDA GPU"):
        PipelineConfig.from_dict({"latency_budget": 0.5, "device": "cuda"})


@pytest.mark.slow
def test_pipeline_under_a_latency_budget(tmp_path, tiny_checkpoint, tiny_options, macs_timing):
    """End to end: plan under a latency budget, final model measured on the target.
    (Timing is made deterministic here; real figures come from the benchmark script.)"""
    model = dwrprune.load(tiny_checkpoint)
    macs_timing(model)
    opts = {k: v for k, v in tiny_options.items() if k not in ("data", "budget")}
    result = dwrprune.prune(model, "synthetic", out=tmp_path / "run", progress="never",
                            latency_budget=0.6, **opts)
    plan = result.run.plan()
    assert plan["latency"]["target"] == "cpu-b1-t1"
    verdict = result.report["latency"]
    assert verdict["median_ms"] <= plan["latency"]["budget_ms"] * 1.03
    assert (tmp_path / "run" / "latency" / "cpu-b1-t1.json").exists()
    assert verdict["ratio"] <= 0.6 * 1.03 and verdict["within"]
    assert verdict["line"].startswith("latency on cpu-b1-t1: budget 0.60 x ")
    # one figure for the target: the cost table's batch-1 column is the verdict's
    assert result.report["latency_ms"]["1"] == verdict["median_ms"]
    assert result.report["original_latency_ms"]["1"] == verdict["original_ms"]
    report = result.report_path.read_text()
    assert verdict["line"] in report


@pytest.mark.parametrize("ratios, rounds, within, noisy", [
    ([0.55], 1, True, False),          # clearly within
    ([0.70], 1, False, False),         # clearly over
    ([0.62, 0.58], 2, True, False),    # straddled once, then decided
    ([0.62, 0.62, 0.62], 3, False, True),  # still straddling: said so
])
def test_latency_verdict_decides_once_and_remeasures_when_noisy(monkeypatch, ratios, rounds,
                                                                 within, noisy):
    calls = iter(ratios)

    def measure(m, res, target, repeats=20, warmup=5, reference=None):
        r = next(calls)
        spread = 0.05 if r == 0.62 else 0.001  # wide quartiles around 0.62: undecided
        return {"median_ms": r * 2.0, "p25_ms": (r - spread) * 2.0,
                "p75_ms": (r + spread) * 2.0, "ratio": r, "raw_median_ms": r}

    monkeypatch.setattr(L, "measure_ms", measure)
    ref = L.Reference(None, 8, 2.0)
    v = L.latency_verdict(None, 8, L.LatencyTarget(), ref, 1.2)
    assert (v["rounds"], v["within"], v["noisy"]) == (rounds, within, noisy)
    assert v["ratio"] == pytest.approx(ratios[-1])
    assert ("OVER budget" in v["line"]) == (not within)
    assert ("too close to call" in v["line"]) == noisy
    assert "budget 0.60 x 2 ms = 1.2 ms" in v["line"]


def test_latency_choice_finds_wider_models_that_run_faster(shr, aligned_latency_model):
    lm = aligned_latency_model()
    budget = lm(shr, 1, 0.7, 1)
    assert lm(shr, 1, 0.75, 1) < budget  # wider, yet faster: bisection alone cannot see it
    w = S._wider_within(shr, lm, 1, 0.7, 1, budget)
    assert w >= 0.75 and lm(shr, 1, w, 1) <= budget
    sol = S.solve_latency(lambda d, w, r: w, shr, lm, budget, (1.0, 0.25, 1.0))
    assert sol["best"]["w"] >= 0.75 and sol["best"]["latency_ms"] <= budget


def test_latency_terms_follow_channel_rounding():
    m = dwrprune.create_model("resnet_tiny2", num_classes=10, in_channels=3)
    m.dwrprune_spec = dwrprune.make_spec("resnet_tiny2", 10, 3, 16)
    rounded = dwrprune.Shrinker(m, round_to=4)
    res, layers = rounded.kept_layers(1, 0.7, 1)
    out = rounded.shrink(1, 0.7, 1)
    for g, cin, cout in layers:
        mod = out.model.get_submodule(g.name)
        if isinstance(mod, nn.Conv2d):
            assert (cin, cout) == (mod.in_channels, mod.out_channels)
            assert cout % 4 == 0 or cout < 4


def test_side_by_side_cost_reports_take_turns(shr):
    """An original and its pruned model are timed in alternating passes (so a drifting
    machine slows both alike); the counts are those of one report each."""
    from dwrprune.cost import cost_report, cost_reports_side_by_side

    small = shr.shrink(0.5, 0.5, 0.75)
    pair = [(shr.model, 16), (small.model, small.spec["input"]["resolution"])]
    calls = []
    hooks = [m.register_forward_hook(lambda mod, a, y, i=i: calls.append((i, a[0].shape[0])))
             for i, (m, _) in enumerate(pair)]
    try:
        reports = cost_reports_side_by_side(pair, latency_batches=(1, 2), repeats=3)
    finally:
        for h in hooks:
            h.remove()
    # per batch size: each model warmed (five passes), then three rounds of one timed pass
    # each, in turn; counting the MACs runs one batch-1 pass of each at the end
    turns = [0] * 5 + [1] * 5 + [0, 1] * 3
    assert [i for i, bs in calls if bs == 2] == turns
    assert [i for i, bs in calls if bs == 1] == turns + [0, 1]
    for (m, res), rep in zip(pair, reports):
        one = cost_report(m, res, latency_batches=(), repeats=1)
        assert (rep.macs, rep.params, rep.resolution) == (one.macs, one.params, one.resolution)
        assert [x.batch_size for x in rep.latency] == [1, 2]
        assert all(x.repeats == 3 and 0 < x.min_ms <= x.p25_ms <= x.median_ms <= x.p75_ms
                   for x in rep.latency)
    with pytest.raises(DwrpruneError, match="repeats"):
        cost_reports_side_by_side(pair, repeats=0)


def test_rounded_shrinker_is_a_copy_that_only_rounds(shr):
    assert shr.rounded(None) is shr and shr.round_to is None
    r4 = shr.rounded(4)
    assert r4 is not shr and r4.round_to == 4 and shr.round_to is None
    assert r4.rounded(4) is r4 and r4.block_order() == shr.block_order()
    layers = r4.kept_layers(1, 0.7, 1)[1]
    counts = [c for _, _, c in layers]
    assert all(c % 4 == 0 or c == g.out_ch for g, _, c in layers)  # the classifier: whole
    assert counts != [c for _, _, c in shr.kept_layers(1, 0.7, 1)[1]]
    for bad in (0, 2.5, True, "8"):
        with pytest.raises(DwrpruneError, match="round_to must be a whole number"):
            shr.rounded(bad)


def test_equivalent_width_matches_the_rounded_models_macs(shr):
    r4 = shr.rounded(4)
    w = S.equivalent_width(shr, r4, 1, 0.7, 1, 0.25)
    assert shr.macs(1, w, 1) <= r4.macs(1, 0.7, 1) < shr.macs(1, w + 1e-3, 1)
    assert S.equivalent_width(shr, r4, 1, 0.7, 1, w + 0.01) is None  # below the box


def test_latency_choice_weighs_rounded_widths(shr, monkeypatch, aligned_latency_model):
    """On a target that runs channel counts off 4 at half speed, the widest unrounded model
    within the budget is narrower than the widest rounded one; the rounded one is predicted
    as the unrounded width of its MACs and chosen where that is higher, then measured as
    built: rounded."""
    lm = aligned_latency_model()
    pred = lambda d, w, r: w  # noqa: E731
    budget = lm(shr.rounded(4), 1, 0.75, 1)
    lo = (1.0, 0.25, 1.0)
    plain = S.solve_latency(pred, shr, lm, budget, lo)["best"]
    assert plain["round_to"] is None
    sol = S.solve_latency(pred, shr, lm, budget, lo, round_to=4)
    best = sol["best"]
    assert best["round_to"] == 4 and best["w"] > plain["w"]
    assert best["latency_ms"] <= budget
    eq = S.equivalent_width(shr, shr.rounded(4), 1, best["w"], 1, lo[1])
    assert best["predicted"] == pytest.approx(eq) and eq > plain["w"]
    assert best["macs"] == shr.rounded(4).macs(1, best["w"], 1)
    seen = []

    def measure(model, res, target, repeats=20, warmup=5, reference=None):
        seen.append([m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)])
        return {"median_ms": budget, "p25_ms": budget, "p75_ms": budget}

    monkeypatch.setattr(S, "measure_ms", measure)
    res = S.choose_under_latency(pred, shr, lm, budget, lo, round_to=4)
    assert res["best"]["round_to"] == 4 and res["steps"][0]["round_to"] == 4
    assert all(c % 4 == 0 for c in seen[0])  # the model measured is the rounded one
    # a shrinker that rounds already weighs nothing else
    assert S.solve_latency(pred, shr.rounded(4), lm, budget, lo, round_to=8)["best"][
        "round_to"] is None


@pytest.mark.slow
def test_pipeline_under_a_latency_budget_rounds_channels_where_that_pays(
        tmp_path, tiny_checkpoint, tiny_options, macs_timing):
    """On a target that runs channel counts off 4 at half speed, the plan weighs rounded
    widths (``latency_round_to``), the final model is built rounded as planned and meets the
    budget; with ``latency_round_to: none`` the same collection plans an unrounded model."""
    model = dwrprune.load(tiny_checkpoint)
    macs_timing(model, align=4)
    opts = {k: v for k, v in tiny_options.items() if k not in ("data", "budget")}
    result = dwrprune.prune(model, "synthetic", out=tmp_path / "run", progress="never",
                            latency_budget=0.5, latency_round_to=4, **opts)
    best = result.run.plan()["solution"]["best"]
    assert best["round_to"] == 4
    assert result.report["point"]["round_to"] == 4
    assert result.report["latency"]["within"]
    pruned = [r for r in result.report["channels"] if r["after"] not in (None, r["before"])]
    assert pruned and all(r["after"] % 4 == 0 for r in pruned)
    assert "(to 4s)" in result.report_path.read_text()
    assert result.run.out_of_date() == []
    from dwrprune.pipeline.shrinker import run_shrinker
    from dwrprune.pipeline.solve import plan_latency

    cfg, _ = result.run.load_config()
    rows = plan_latency(result.run, run_shrinker(result.run, model, cfg),
                        cfg.replace(latency_round_to=None), [0.5], save=False,
                        own_target=False)
    assert rows[0]["solution"].best.round_to is None
