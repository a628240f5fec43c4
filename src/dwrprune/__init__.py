"""dwrprune: prune a trained CNN along depth, width and input resolution to a MACs budget."""

__version__ = "0.1.0"

from .checkpoint import load, save_model  # noqa: E402
from .cost import count_macs, count_params, measure_latency  # noqa: E402
from .data import create_dataset, make_loader  # noqa: E402
from .engine import TrainConfig, evaluate, recalibrate_batchnorm, train  # noqa: E402
from .errors import DwrpruneError  # noqa: E402
from .models import create_model, list_models  # noqa: E402

__all__ = [
    "DwrpruneError", "TrainConfig", "__version__", "count_macs", "count_params",
    "create_dataset", "create_model", "evaluate", "list_models", "load", "make_loader",
    "measure_latency", "recalibrate_batchnorm", "save_model", "train",
]
