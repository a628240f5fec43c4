"""The library's shape: no import cycles, layers that never import upwards, one typed
config refused early, a typed spec with true provenance, and the one-call API."""

import ast
import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import dwrprune
from dwrprune import DwrpruneError
from dwrprune.cli import main
from dwrprune.pipeline import PipelineConfig, resolve_config

PKG = Path(dwrprune.__file__).parent


def _module_graph(pkg: Path) -> dict[str, set[str]]:
    """Module -> modules of the package it imports, function-level imports included."""
    mods = {}
    for f in pkg.rglob("*.py"):
        parts = list(f.relative_to(pkg.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    graph = {}
    for m, f in mods.items():
        base = m.split(".") if f.name == "__init__.py" else m.split(".")[:-1]
        deps = set()
        tree = ast.parse(f.read_text())
        typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                       and getattr(node.test, "id", None) == "TYPE_CHECKING"
                       for n in ast.walk(node)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom):
                root = (".".join(base[: len(base) - node.level + 1] +
                                 ([node.module] if node.module else []))
                        if node.level else node.module or "")
                for a in node.names:
                    t = f"{root}.{a.name}" if f"{root}.{a.name}" in mods else root
                    if t in mods and t != m:
                        deps.add(t)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in mods and a.name != m)
        graph[m] = deps
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycles():
    graph = _module_graph(PKG)
    assert "dwrprune.pipeline.run" in graph["dwrprune.pipeline.api"]  # the walk sees edges
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_cycle_detection_finds_a_planted_cycle(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("def f():\n    from .a import y\n")
    assert _find_cycle(_module_graph(pkg)) == ["pkg.a", "pkg.b", "pkg.a"]


# Bottom to top: a module may import its own layer and the ones below, never one above.
LAYERS = [
    ("_version", "errors", "registry"),
    ("io", "pretrained"),
    ("models",),
    ("cost",),
    ("training",),
    ("pruning",),
    ("search",),
    ("checkpoint", "export"),
    ("pipeline",),
    ("tasks",),
    ("cli", "__main__"),
    ("",),  # the package itself: the public API
]


def _layer_violations(graph: dict[str, set[str]], layers) -> list[str]:
    rank = {unit: i for i, units in enumerate(layers) for unit in units}

    def unit(mod: str) -> str:
        parts = mod.split(".")
        return parts[1] if len(parts) > 1 else ""

    bad = []
    for m, deps in graph.items():
        for d in deps:
            if unit(d) != unit(m) and rank[unit(d)] > rank[unit(m)]:
                bad.append(f"{m} imports {d}")
    return sorted(bad)


def test_layers_never_import_upwards():
    """Function-level imports count too; imports for type checking alone do not."""
    graph = _module_graph(PKG)
    units = {m.split(".")[1] if "." in m else "" for m in graph}
    assert units <= {u for layer in LAYERS for u in layer}, "a unit missing from LAYERS"
    assert _layer_violations(graph, LAYERS) == []


def test_layer_check_finds_an_upward_import(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "low").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low" / "__init__.py").write_text("")
    (pkg / "low" / "a.py").write_text("def f():\n    from ..high import g\n")
    (pkg / "high.py").write_text("from .low.a import f\n")
    layers = [("low",), ("high",), ("",)]
    assert _layer_violations(_module_graph(pkg), layers) == ["pkg.low.a imports pkg.high"]


def test_top_level_reads_like_a_table_of_contents():
    modules = sorted(f.name for f in PKG.glob("*.py"))
    assert len(modules) <= 8, modules
    research = [str(f.relative_to(PKG)) for f in PKG.rglob("*.py")
                if any(w in f.stem for w in ("bench", "oracle"))]
    assert research == [], "benchmark and oracle code belongs in benchmarks/"


def test_importing_the_cli_loads_neither_torch_nor_research_code():
    """What ``import dwrprune.cli`` really loads (a fresh interpreter), not its own lines."""
    code = ("import sys, dwrprune.cli; "
            "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'torchvision', 'torch_pruning', 'numpy', 'scipy', 'matplotlib', "
            "'dwrbench', 'ray', 'onnx', 'timm'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == []
    version = subprocess.run([sys.executable, "-m", "dwrprune", "--version"],
                             capture_output=True, text=True, check=True)
    assert version.stdout.strip() == f"dwrprune {dwrprune.__version__}"


def test_the_public_api_resolves_every_name():
    for name in dwrprune.__all__:
        assert getattr(dwrprune, name) is not None
    with pytest.raises(AttributeError):
        dwrprune.no_such_name  # noqa: B018


# ---------------------------------------------------------------------------- config
BAD_OPTIONS = [  # one per option family: names, numbers, lists, final stage, executor, types
    ("depth_criterion", "nonsense", "depth_criterion must be one of"),
    ("channel_criterion", "nonsense", "channel_criterion must be one of"),
    ("width_allocation", "greedy", "width_allocation must be one of"),
    ("families", ["cubic"], "families must be one of"),
    ("monotone", "maybe", "monotone must be one of"),
    ("budget", 1.5, "budget must be in"),
    ("budget", [1, 2], "option budget must be a number"),
    ("depth_steps", [0.5, 0.7], "must decrease"),
    ("width_steps", [1.5], "fractions in"),
    ("mixed_points", [[0.5, 0.5]], r"\[d, w, r\]"),
    ("finetune_steps", -1, "finetune_steps must be >= 0"),
    ("finetune_lr", 0, "finetune_lr must be > 0"),
    ("round_to", 0, "round_to must be >= 1"),
    ("recal_batches", -3, "recal_batches must be >= 0"),
    ("workers", -1, "workers must be >= 0"),
    ("batch_size", 0, "batch_size must be >= 1"),
    ("val_fraction", 1.2, "val_fraction must be in"),
    ("max_degree", 0, "max_degree must be in"),
    ("final_epochs", 0, "final_epochs must be >= 1"),
    ("final_lr", -1, "final_lr must be > 0"),
    ("distill", 5, "distill must be in"),
    ("label_smoothing", 2, "label_smoothing must be in"),
    ("executor", "slurm", "executor must be one of"),
    ("job_cpus", 0, "job_cpus must be > 0"),
    ("transitions", "yes", "option transitions must be true or false"),
    ("seed", 1.5, "option seed must be a whole number"),
    ("lower_bounds", [0.1, 0.2], r"lower_bounds must be \[d, w, r\]"),
    ("min_gain_sigmas", -1, "min_gain_sigmas must be >= 0"),
]


@pytest.mark.parametrize("key,value,match", BAD_OPTIONS, ids=[f"{k}={v}" for k, v, _ in
                                                               BAD_OPTIONS])
def test_every_bad_option_is_refused_by_the_config(key, value, match):
    with pytest.raises(DwrpruneError, match=match):
        resolve_config("quick", **{key: value})


@pytest.mark.parametrize("flag,value", [("--distill", "5"), ("--final-epochs", "0"),
                                        ("--label-smoothing", "2"), ("--final-lr", "-1"),
                                        ("--channel-criterion", "nonsense"),
                                        ("--families", "cubic")])
def test_bad_option_refused_before_any_sample(tmp_path, tiny_checkpoint, config_file, capsys,
                                              flag, value):
    run = tmp_path / "run"
    assert main(["prune", "--checkpoint", str(tiny_checkpoint), "--config", config_file(),
                 "--out", str(run), flag, value, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dwrprune: error:") and len(err.splitlines()) == 1
    assert flag.lstrip("-").replace("-", "_") in err
    assert not run.exists()  # nothing written, nothing computed


def test_collection_binding_is_declared_on_the_fields():
    collect = PipelineConfig.bound_fields("collect")
    final = PipelineConfig.bound_fields("final")
    assert {"finetune_steps", "depth_criterion", "seed"} <= set(collect)
    assert {"budget", "final_epochs", "distill"} <= set(final)
    assert "executor" not in collect and not set(collect) & set(final)


def test_yaml_config_with_wrong_type_names_the_key(tmp_path, tiny_checkpoint, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("budget: [1, 2]\n")
    assert main(["prune", "--checkpoint", str(tiny_checkpoint), "--config", str(cfg),
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "option budget must be a number" in err and "Traceback" not in err


# ---------------------------------------------------------------------------- spec
def test_model_spec_round_trip_and_typed_access():
    model = dwrprune.load(dwrprune.pretrained.path())
    spec = dwrprune.spec_of(model)
    assert dwrprune.ModelSpec.from_dict(spec.to_dict()).to_dict() == model.dwrprune_spec
    assert (spec.name, spec.resolution, spec.in_channels, spec.pruned) == (
        "resnet20", 28, 1, False)
    small = dwrprune.Shrinker(model).shrink(0.67, 0.5, 0.75)
    s = dwrprune.ModelSpec.from_dict(small.spec)
    assert s.to_dict() == small.spec and s.pruned and s.resolution == 21
    assert s.point == {"d": pytest.approx(5 / 7), "w": 0.5, "r": 0.75}  # 7 removable blocks
    assert s.provenance["depth_criterion"] == "weight_norm"
    assert s.provenance["channel_criterion"] == "l1"


def test_spec_of_a_model_without_one_says_how_to_give_one():
    with pytest.raises(DwrpruneError, match="example_inputs"):
        dwrprune.spec_of(nn.Conv2d(1, 2, 3))


def test_data_needs_are_declared_by_criteria():
    from dwrprune.pruning.shrink import data_needs

    assert data_needs() == frozenset()
    assert data_needs("loss") == {"train", "val"}
    assert data_needs(channel_criterion="taylor") == {"train"}
    assert data_needs(channel_criterion="autobot") == {"train"}
    assert data_needs(width_allocation="autobot") == {"train"}
    with pytest.raises(DwrpruneError, match="unknown channel criterion 'x'"):
        data_needs(channel_criterion="x")


@pytest.mark.slow
def test_quick_preset_with_autobot_criterion_gets_its_data(tiny_checkpoint, tiny_options):
    """Once failed in sample jobs with 'needs training data' although data was configured."""
    from dwrprune.pipeline import DatasetSource, build_shrinker

    cfg = PipelineConfig.from_dict({**tiny_options, "channel_criterion": "autobot",
                                    "autobot_steps": 2})
    shr = build_shrinker(dwrprune.load(tiny_checkpoint), cfg,
                         DatasetSource("synthetic", batch_size=32))
    out = shr.shrink(1.0, 0.5, 1.0)
    assert out.spec["provenance"]["channel_criterion"] == "autobot"



@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(budget=st.floats(0.2, 0.95), a=st.floats(-1, 1), b=st.floats(-1, 1),
       c=st.floats(-1, 1))
def test_solver_never_returns_a_point_over_budget(budget, a, b, c):
    """Whatever the predictor's shape, the chosen point's exact MACs are within budget."""
    from dwrprune.cost.rounding import approx_cost_ratio
    from dwrprune.search.solver import solve

    def pred(d, w, r):
        return 0.9 + 0.05 * (a * d + b * w + c * r) - 0.01 * (d - w) ** 2

    def macs(d, w, r):  # a realisable cost: whole blocks of 9, channels of 16, pixels of 28
        return int(1e6 * approx_cost_ratio(round(d * 9) / 9, round(w * 16) / 16,
                                           round(r * 28) / 28))

    sol = solve(pred, macs, macs(1, 1, 1), budget, (0.1, 0.1, 0.3), 9, 28, 8)
    assert sol.best.macs <= budget * sol.base_macs


# ---------------------------------------------------------------------------- one-call API
@pytest.mark.slow
def test_one_call_prune_returns_a_usable_model_with_true_provenance(tmp_path, tiny_checkpoint,
                                                                     tiny_options):
    model = dwrprune.load(tiny_checkpoint)
    result = dwrprune.prune(model, "synthetic", out=tmp_path / "run", progress="never",
                            **{k: v for k, v in tiny_options.items() if k != "data"})
    spec = result.spec
    x = torch.zeros(2, spec.in_channels, spec.resolution, spec.resolution)
    assert result.model(x).shape == (2, 10)  # usable at once
    assert result.point["resolution"] == spec.resolution
    assert result.model_path.is_file() and result.report_path.is_file()
    assert result.report["macs"] <= 0.5 * result.report["original_macs"]
    # provenance: blocks were ranked by validation loss at collection, not by weight norm
    assert spec.provenance["depth_criterion"] in ("loss", None)
    if spec.removed_blocks:
        assert spec.provenance["depth_criterion"] == "loss"
        assert spec.arch["depth_criterion"] == "loss"
    assert spec.provenance["finetune"]["epochs"] == 1
    assert result.run.block_ranking()[1] == "loss"


def test_final_spec_provenance_names_the_ranking_criterion(tiny_checkpoint, tiny_options):
    """Pruning with a saved ranking records what made the ranking."""
    from dwrprune.pipeline import build_shrinker

    model = dwrprune.load(tiny_checkpoint)
    cfg = PipelineConfig.from_dict(tiny_options)  # depth_criterion: loss
    order = [b.name for b in dwrprune.Shrinker(model).blocks][::-1]
    shr = build_shrinker(model, cfg, None, block_order=order)
    out = shr.shrink(0.5, 1.0, 1.0)
    assert out.spec["provenance"]["depth_criterion"] == "loss"
    assert [b["name"] for b in out.spec["arch"]["removed_blocks"]] == order[:2]


class _UserNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))

    def forward(self, x):
        return self.head(self.body(self.stem(x)))


def test_count_and_attach_spec_and_load_into_own_instance(tmp_path):
    net = _UserNet()
    x = torch.zeros(1, 1, 16, 16)
    c = dwrprune.count(net, x)
    assert c.macs == dwrprune.count_macs(net, 16, 1) and c.params == sum(
        p.numel() for p in net.parameters())
    from dwrprune.pipeline import attach_spec

    attach_spec(net, x)
    spec = dwrprune.spec_of(net)
    assert (spec.num_classes, spec.in_channels, spec.resolution) == (3, 1, 16)
    small = dwrprune.Shrinker(net).shrink(1.0, 0.5, 1.0)
    dwrprune.save_model(tmp_path / "s.pt", small.model, small.spec)
    mine = dwrprune.load(tmp_path / "s.pt", model=_UserNet())
    assert torch.equal(mine(x), small.model(x))
    assert mine.body[0].out_channels == 4


def test_progress_bars_only_on_a_terminal(monkeypatch):
    from dwrprune.training.progress import resolve_progress

    class Pipe:
        def isatty(self):
            return False

    monkeypatch.setattr("sys.stderr", Pipe())
    assert resolve_progress("auto") is False and resolve_progress("always") is True
    with pytest.raises(DwrpruneError, match="progress must be one of"):
        resolve_progress("sometimes")


def test_config_replace_validates():
    cfg = PipelineConfig()
    assert cfg.replace(budget=0.3).budget == 0.3
    with pytest.raises(DwrpruneError):
        cfg.replace(budget=3)
    assert copy.deepcopy(cfg) == cfg


class _PlainNet(nn.Module):
    """No residual block anywhere: depth is not an axis of this model."""

    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                               nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16),
                               nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                               nn.Linear(16, 10))

    def forward(self, x):
        return self.f(x)


def _tiny_densenet():
    """torchvision's DenseNet, tiny: concatenating dense blocks, whose layers are its depth."""
    from torchvision.models.densenet import DenseNet

    return DenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2,
                    num_classes=10)


@pytest.mark.slow
@pytest.mark.parametrize("make,depth", [(_PlainNet, None), (_tiny_densenet, "4 removable "
                                                                           "blocks (dense)")])
def test_pipeline_runs_over_the_axes_a_model_has_and_the_report_says_so(tmp_path, tiny_options,
                                                                         make, depth):
    torch.manual_seed(0)
    opts = {k: v for k, v in tiny_options.items() if k != "data"}
    res = dwrprune.prune(make(), "synthetic", out=tmp_path / "run", progress="never",
                         example_inputs=torch.zeros(2, 3, 16, 16), **opts)
    assert res.report["macs"] <= 0.5 * res.report["original_macs"]
    report = res.report_path.read_text()
    if depth is None:
        assert res.point["d"] == 1.0
        assert "- depth: not available (no residual block" in report
    else:
        assert f"- depth: {depth}" in report
    assert "- width: " in report and "coupled channel groups" in report
