"""Training and evaluation: the one loop everything imports, and the data it reads.

    data         datasets (Fashion-MNIST, CIFAR, image folders, synthetic) and loaders
    engine       ``train``, ``evaluate``, ``recalibrate_batchnorm``
    distributed  torchrun data parallelism
    progress     when progress bars are shown
"""

from .data import create_dataset, make_loader
from .engine import TrainConfig, evaluate, recalibrate_batchnorm, train

__all__ = ["TrainConfig", "create_dataset", "evaluate", "make_loader", "recalibrate_batchnorm",
           "train"]
