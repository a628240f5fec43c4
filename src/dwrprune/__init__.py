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

__version__ = "0.1.0"

from . import pretrained  # noqa: E402
from .checkpoint import load, save_model  # noqa: E402
from .cost import count, count_macs, count_params, measure_latency  # noqa: E402
from .errors import DwrpruneError  # noqa: E402
from .io.spec import ModelSpec, make_spec, spec_of  # noqa: E402
from .models import create_model, list_models  # noqa: E402
from .pipeline import (
    DatasetSource,
    PipelineConfig,
    PruneResult,
    collect,
    fit_samples,
    prune,
    resolve_config,
)
from .pipeline import solve_budget as solve  # noqa: E402
from .pruning.shrink import Shrinker, shrink, shrink_cost  # noqa: E402
from .search.predictor import fit_predictor  # noqa: E402
from .training.data import create_dataset, make_loader  # noqa: E402
from .training.engine import TrainConfig, evaluate, recalibrate_batchnorm, train  # noqa: E402

__all__ = [
    "DatasetSource", "DwrpruneError", "ModelSpec", "PipelineConfig", "PruneResult",
    "Shrinker", "TrainConfig", "__version__", "collect", "count", "count_macs",
    "count_params", "create_dataset", "create_model", "evaluate", "fit_predictor",
    "fit_samples", "list_models", "load", "make_loader", "make_spec", "measure_latency",
    "pretrained", "prune", "recalibrate_batchnorm", "resolve_config", "save_model", "shrink",
    "shrink_cost", "solve", "spec_of", "train",
]
