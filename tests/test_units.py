"""Unit tests of the small modules on their own: cost math, criteria, blocks, surgery records,
the sample store and the report."""

import sqlite3

import pytest
import torch
from torch import nn

from dwrprune import DwrpruneError, create_model, make_spec
from dwrprune.cost.rounding import approx_cost_ratio, kept_blocks, kept_channels, kept_resolution
from dwrprune.io.store import Sample, SampleStore
from dwrprune.pruning.blocks import Block, find_removable_blocks, remove_blocks
from dwrprune.pruning.criteria import (
    L1,
    WeightNormDepth,
    make_channel_criterion,
    make_depth_criterion,
)
from dwrprune.pruning.surgery import apply_layer_changes, layer_snapshot, record_layer_changes


# ---------------------------------------------------------------------------- cost math
@pytest.mark.parametrize("n,d,kept", [(9, 1.0, 9), (9, 0.5, 5), (9, 0.44, 4), (9, 0.05, 0),
                                      (7, 0.71, 5), (0, 0.5, 0)])
def test_kept_blocks_rounds_to_nearest(n, d, kept):
    assert kept_blocks(n, d) == kept


@pytest.mark.parametrize("n,w,g,r,kept", [(16, 0.5, 1, None, 8), (16, 0.01, 1, None, 1),
                                          (64, 0.3, 1, 8, 16), (32, 0.5, 4, None, 16),
                                          (12, 0.9, 1, 8, 8), (6, 0.5, 1, 8, 3)])
def test_kept_channels(n, w, g, r, kept):
    k = kept_channels(n, w, g, r)
    assert k == kept and k % g == 0 and 1 <= k <= n


def test_kept_resolution_and_cost_model():
    assert kept_resolution(28, 0.75) == 21 and kept_resolution(28, 0.01) == 1
    assert approx_cost_ratio(0.5, 0.5, 0.5) == pytest.approx(0.5 ** 5)


# ---------------------------------------------------------------------------- criteria
def test_l1_criterion_ranks_channels_by_magnitude():
    from dwrprune.pruning.surgery import build_graph

    m = nn.Sequential(nn.Conv2d(1, 4, 1, bias=False), nn.ReLU(), nn.Conv2d(4, 2, 1))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([3.0, 0.1, 2.0, 1.0]).view(4, 1, 1, 1))
    dg, groups = build_graph(m, torch.zeros(1, 1, 4, 4), ["2"])
    scores = L1().group_scores(groups[0], dg)
    assert torch.argsort(scores).tolist()[:2] == [1, 3]  # smallest |w| first


def test_weight_norm_depth_scores_the_last_bn_gamma():
    m = create_model("resnet_tiny2", num_classes=10, in_channels=3)
    blocks = find_removable_blocks(m, torch.zeros(1, 3, 16, 16))
    with torch.no_grad():
        for i, b in enumerate(blocks):
            bn = [x for x in m.get_submodule(b.name).modules()
                  if isinstance(x, nn.BatchNorm2d)][-1]
            bn.weight.fill_(0.1 * (i + 1))
    scores = WeightNormDepth().block_scores(m, blocks)
    assert scores == pytest.approx([0.1 * (i + 1) for i in range(len(blocks))])


def test_criteria_by_name_and_their_needs():
    assert make_channel_criterion("l2").name == "l2"
    assert make_depth_criterion("weight_norm").needs == frozenset()
    with pytest.raises(DwrpruneError, match="needs training data and validation data"):
        make_depth_criterion("loss")
    with pytest.raises(DwrpruneError, match="unknown channel criterion"):
        make_channel_criterion("l3")


# ---------------------------------------------------------------------------- blocks, surgery
def test_residual_blocks_found_and_removed():
    m = create_model("resnet_tiny2", num_classes=10, in_channels=3).eval()
    blocks = find_removable_blocks(m, torch.zeros(1, 3, 16, 16))
    # 2 blocks per stage; the first block of stages 2 and 3 changes shape (a transition)
    assert [b.kind for b in blocks] == ["residual"] * 4
    remove_blocks(m, blocks[:1])
    assert isinstance(m.get_submodule(blocks[0].name), nn.Identity)
    assert Block.from_dict(blocks[0].to_dict()) == blocks[0]


def test_layer_records_apply_to_a_fresh_model():
    a = create_model("vgg_tiny", num_classes=10, in_channels=3)
    b = create_model("vgg_tiny", num_classes=10, in_channels=3)
    conv = next(x for x in b.modules() if isinstance(x, nn.Conv2d))
    conv.out_channels = 4
    conv.weight = nn.Parameter(conv.weight[:4].clone())
    changes = record_layer_changes(a, b)
    name = next(iter(changes))
    assert changes[name]["attrs"] == {"out_channels": 4}
    apply_layer_changes(a, changes)
    assert layer_snapshot(a)[name] == layer_snapshot(b)[name]


# ---------------------------------------------------------------------------- store
def _sample(key, acc=0.9, created=0.0):
    return Sample(key, "chain", 1.0, 0.5, 1.0, 16, 100, 10, acc, 0.3, 3, 0, 0.1,
                  created=created)


def test_store_keeps_order_and_binding(tmp_path):
    store = SampleStore(tmp_path / "s.sqlite")
    store.bind({"a": 1}, "fp")
    store.add(_sample("w/1", created=2.0))
    store.add(_sample("w/0", 0.8, created=1.0))
    assert [s.key for s in store.samples()] == ["w/0", "w/1"] and store.has("w/1")
    assert store.get("w/0").val_acc == 0.8 and store.get("nope") is None
    with pytest.raises(sqlite3.IntegrityError):
        store.add(_sample("w/0"))  # one row per job
    again = SampleStore(tmp_path / "s.sqlite")
    with pytest.raises(DwrpruneError, match="different model"):
        again.bind({"a": 1}, "other")
    with pytest.raises(DwrpruneError, match=r"differs in: a \(was 1, now 2\)"):
        again.bind({"a": 2}, "fp")


def test_foreign_sqlite_is_not_a_store(tmp_path):
    db = sqlite3.connect(tmp_path / "x.sqlite")
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    with pytest.raises(DwrpruneError, match="not a dwrprune sample store"):
        SampleStore(tmp_path / "x.sqlite")


# ---------------------------------------------------------------------------- report
def test_report_from_samples_alone(tmp_path):
    from dwrprune.pipeline.report import write_report

    store = SampleStore(tmp_path / "samples.sqlite")
    store.add(_sample("orig"))
    store.add(_sample("w/0", 0.85))
    rep = write_report(tmp_path)
    assert len(rep["samples"]) == 2 and rep["predictor"] is None and rep["final"] is None
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Samples (2" in md
    assert (tmp_path / "report" / "axes.png").stat().st_size > 1000
    with pytest.raises(DwrpruneError, match="no samples"):
        write_report(tmp_path / "empty")


def test_make_spec_matches_the_typed_view():
    s = make_spec("resnet20", 10, 1, 28, "fashion-mnist", [0.5], [0.25])
    assert s["model"] == {"name": "resnet20", "num_classes": 10, "in_channels": 1}
    assert s["input"]["mean"] == [0.5] and s["arch"] is None


def test_collection_cost_is_counted_and_estimated_from_its_own_timings():
    """Before collecting: how many fine-tunes of how many steps; once one fine-tuned sample
    is timed: the remaining time, from the evaluation and per-step times measured."""
    from dwrprune.pipeline import resolve_config
    from dwrprune.pipeline.jobs import describe_jobs, estimate_seconds, job_steps, plan_jobs

    cfg = resolve_config("quick")
    jobs = plan_jobs(cfg, 7, 28, 8)
    assert [job_steps(j, cfg) for j in jobs].count(0) == 1  # the original only
    line = describe_jobs(jobs, cfg)
    assert line.startswith(f"{len(jobs)} samples: {len(jobs) - 1} fine-tunes of 30 steps on "
                           "4000 training images")
    full = resolve_config("full")
    assert "fine-tunes (14 of 150 steps, 8 of 300 steps)" in describe_jobs(
        plan_jobs(full, 7, 28, 8), full)

    def sample(key, steps, seconds):
        return Sample(key, "chain", 1, 1, 1, 28, 1, 1, 0.9, 0.1, steps, 0, seconds)

    assert estimate_seconds(jobs[1:], [sample("orig", 0, 2.0)], cfg) is None
    done = [sample("orig", 0, 2.0), sample("d/0", 30, 8.0)]  # 0.2 s per step
    assert estimate_seconds(jobs[2:], done, cfg) == pytest.approx(
        sum(2.0 + 0.2 * job_steps(j, cfg) for j in jobs[2:]))
    # with each job's MACs, a step of a smaller model costs less (the sample had 1 MAC)
    assert estimate_seconds(jobs[2:], done, cfg, lambda j: 0.5) == pytest.approx(
        sum(2.0 + 0.1 * job_steps(j, cfg) for j in jobs[2:]))


@pytest.mark.parametrize("pairs, odd", [
    ([(16, 11), (32, 23), (64, 46)], [11, 23, 46]),   # ResNet-20 at w=0.72
    ([(16, 8), (32, 16), (64, 40)], []),              # the same rounded to 8
    ([(10, 7), (64, None), (3, 3)], []),              # off 8 before pruning; removed; kept
])
def test_misaligned_counts_only_what_pruning_moved_off_eight(pairs, odd):
    from dwrprune.cost.rounding import misaligned

    assert misaligned(pairs) == odd
    assert misaligned([(b, b) for b, _ in pairs]) == []


def test_alignment_note_names_the_counts_and_stays_quiet_when_measured_on_the_target():
    from dwrprune.pipeline.report import alignment_note

    chans = [{"layer": f"l{i}", "before": 16 * (i + 1), "after": 16 * (i + 1) - 5}
             for i in range(8)]
    note = alignment_note({"channels": chans})
    assert note.startswith("8 pruned layers") and "11, 27, 43, 59, 75, 91, ..." in note
    assert "--round-to 8" in note
    assert alignment_note({"channels": chans, "latency": {"target": "cpu-b1-t1"}}) == note
    assert alignment_note({"channels": chans,
                           "latency": {"target": "onnxruntime-cpu-b1-t1"}}) is None
    rounded = [{**c, "after": 8 * (i + 1)} for i, c in enumerate(chans)]
    assert alignment_note({"channels": rounded}) is None
