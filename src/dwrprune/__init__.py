"""dwrprune: prune a trained CNN along depth, width and input resolution to a MACs budget.

One call::

    model = dwrprune.load(dwrprune.pretrained.path())         # or your own model
    result = dwrprune.prune(model, "fashion-mnist", budget=0.5, preset="quick", out="runs/x")
    result.model, result.spec, result.point, result.report

or stage by stage (each resumable, each with the same checks)::

    cfg = dwrprune.resolve_config("quick", budget=0.5)
    data = dwrprune.DatasetSource("fashion-mnist")            # or any DataSource
    store = dwrprune.collect(model, data, cfg, "runs/x")      # stage 1
    predictor, holdout = dwrprune.fit_samples(store, cfg)     # stage 2
    solution = dwrprune.solve(predictor, dwrprune.Shrinker(model), 0.5)   # stage 3
"""

import importlib

from ._version import __version__  # noqa: F401  (in __all__ below)

# The public API, name -> (module, attribute).  Loaded on first use (PEP 562), so that
# ``import dwrprune`` and the command line's ``--version`` start without torch.
_API = {
    "DwrpruneError": ("errors", "DwrpruneError"),
    "pretrained": ("pretrained", None),
    "load": ("checkpoint", "load"),
    "save_model": ("checkpoint", "save_model"),
    "count": ("cost", "count"),
    "count_macs": ("cost", "count_macs"),
    "count_params": ("cost", "count_params"),
    "measure_latency": ("cost", "measure_latency"),
    "ModelSpec": ("io.spec", "ModelSpec"),
    "make_spec": ("io.spec", "make_spec"),
    "spec_of": ("io.spec", "spec_of"),
    "create_model": ("models", "create_model"),
    "list_models": ("models", "list_models"),
    "DatasetSource": ("pipeline", "DatasetSource"),
    "TorchDataSource": ("pipeline", "TorchDataSource"),
    "import_model": ("tasks", "import_model"),
    "PipelineConfig": ("pipeline", "PipelineConfig"),
    "PruneResult": ("pipeline", "PruneResult"),
    "collect": ("pipeline", "collect"),
    "fit_samples": ("pipeline", "fit_samples"),
    "prune": ("pipeline", "prune"),
    "resolve_config": ("pipeline", "resolve_config"),
    "solve": ("pipeline", "solve_budget"),
    "Shrinker": ("pruning.shrink", "Shrinker"),
    "shrink": ("pruning.shrink", "shrink"),
    "shrink_cost": ("pruning.shrink", "shrink_cost"),
    "fit_predictor": ("search.predictor", "fit_predictor"),
    "create_dataset": ("training.data", "create_dataset"),
    "make_loader": ("training.data", "make_loader"),
    "TrainConfig": ("training.engine", "TrainConfig"),
    "evaluate": ("training.engine", "evaluate"),
    "export_onnx": ("export", "export_onnx"),
    "recalibrate_batchnorm": ("training.engine", "recalibrate_batchnorm"),
    "train": ("training.engine", "train"),
}

__all__ = sorted([*_API, "__version__"])


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'dwrprune' has no attribute {name!r}")
    module, attr = _API[name]
    mod = importlib.import_module(f".{module}", __name__)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
