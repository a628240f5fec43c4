"""Where a pipeline's images come from, and the checks made on them before any work.

The pipeline never builds loaders itself: it asks a :class:`DataSource` for a split at a
resolution.  :class:`DatasetSource` serves dwrprune's datasets; a user may pass any object with
the same ``loader`` method (and optionally ``info``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..errors import DwrpruneError
from ..io.spec import ModelSpec
from ..training.engine import TrainConfig, train


class DataSource(Protocol):
    """Where images come from, at any resolution."""

    def loader(self, split: str, resolution: int, *, shuffle: bool = False,
               subset: int | None = None, seed: int = 0) -> DataLoader: ...


@dataclass
class DatasetSource:
    """A :class:`DataSource` over :func:`dwrprune.create_dataset`."""

    name: str = "fashion-mnist"
    data_dir: str | None = None
    val_fraction: float = 0.1
    batch_size: int = 128
    workers: int = 0
    input_size: int | None = None
    resize: str = "resize"
    train_augment: str = "mild"
    mean: list[float] | None = None
    std: list[float] | None = None

    @property
    def options(self) -> dict:
        """How images are read: the preprocessing options (only those given)."""
        opts = {"input_size": self.input_size, "mean": self.mean, "std": self.std}
        opts = {k: v for k, v in opts.items() if v is not None}
        if self.resize != "resize":
            opts["resize"] = self.resize
        if self.train_augment != "mild":
            opts["train_augment"] = self.train_augment
        return opts

    def loader(self, split: str, resolution: int | None, *, shuffle: bool = False,
               subset: int | None = None, seed: int = 0,
               augment: bool | None = None) -> DataLoader:
        from ..training.data import create_dataset, make_loader

        ds = create_dataset(self.name, split, data_dir=self.data_dir, resolution=resolution,
                            val_fraction=self.val_fraction, subset=subset, subset_seed=seed,
                            augment=augment, **self.options)
        return make_loader(ds, self.batch_size, shuffle=shuffle, seed=seed,
                           num_workers=self.workers)

    @classmethod
    def from_config(cls, cfg) -> DatasetSource:
        return cls(cfg.data, cfg.data_dir, cfg.val_fraction, cfg.batch_size, cfg.workers,
                   cfg.input_size, cfg.resize, cfg.train_augment, cfg.mean, cfg.std)

    @property
    def info(self):
        from ..training.data import dataset_info

        return dataset_info(self.name, self.data_dir, **self.options)


class TorchDataSource:
    """Your own torch data as a :class:`DataSource`: ``train``, ``val`` and (optionally)
    ``test`` are Datasets or DataLoaders yielding ``(images, labels)``, images as float
    tensors already scaled and normalised as your model expects.  A DataLoader's dataset,
    batch size and collate function are used; dwrprune makes its own loaders from them
    (seeded shuffling, subsets) and resizes each batch to the resolution asked for
    (bilinear, antialiased), so the resolution axis works on any data.

        source = dwrprune.TorchDataSource(train_ds, val_ds, test_ds)
    """

    def __init__(self, train, val, test=None, *, batch_size: int = 128, workers: int = 0):
        for split, v in (("train", train), ("val", val), ("test", test)):
            if v is None and split != "test":
                raise DwrpruneError(f"TorchDataSource needs {split} data (a Dataset or "
                                    "DataLoader): choices are measured on validation data "
                                    "held out of training")
            if v is not None and not isinstance(v, (Dataset, DataLoader)):
                raise DwrpruneError(f"{split} data must be a torch Dataset or DataLoader, got "
                                    f"{type(v).__name__}")
        self.splits = {"train": train, "val": val, "test": test}
        self.batch_size, self.workers = batch_size, workers

    def loader(self, split: str, resolution: int, *, shuffle: bool = False,
               subset: int | None = None, seed: int = 0, augment=None) -> DataLoader:
        from ..training.data import ResizeCollate, make_loader

        if split == "trainval":
            split = "train"
        src = self.splits.get(split)
        if src is None:
            raise DwrpruneError(f"no {split} data was given (TorchDataSource(train, val, "
                                "test)); the test split is what the final model is scored on")
        ds = src.dataset if isinstance(src, DataLoader) else src
        batch = src.batch_size if isinstance(src, DataLoader) and src.batch_size else \
            self.batch_size
        collate = src.collate_fn if isinstance(src, DataLoader) else None
        if subset is not None and subset < len(ds):
            pick = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
            ds = Subset(ds, pick[:subset].sort().values.tolist())
        return make_loader(ds, batch, shuffle=shuffle, seed=seed, num_workers=self.workers,
                           collate_fn=ResizeCollate(resolution, collate))


def check_data_matches(spec: ModelSpec | dict, info) -> None:
    """The dataset fits the model: same number of classes and input channels."""
    s = spec if isinstance(spec, ModelSpec) else ModelSpec.from_dict(spec)
    if info.num_classes and info.num_classes != s.num_classes:
        raise DwrpruneError(f"dataset {info.name!r} has {info.num_classes} classes but the "
                            f"model outputs {s.num_classes}")
    if info.in_channels != s.in_channels:
        raise DwrpruneError(f"dataset {info.name!r} has {info.in_channels} input channels but "
                            f"the model expects {s.in_channels}")


def complete_contract(model: nn.Module, data: DataSource, cfg=None) -> ModelSpec:
    """Record in the model's spec how the data feeds it (dataset, resize method, mean, std):
    the pruned models inherit it, so every checkpoint says how to feed it.  A source that
    cannot say (a loader of your own) leaves what the spec holds, or takes ``cfg.mean`` and
    ``cfg.std`` where given.  Returns the (updated) spec."""
    from tqdm.auto import tqdm

    from ..io.spec import set_spec, spec_of

    spec = spec_of(model)
    info = getattr(data, "info", None)
    if info is not None:
        check_data_matches(spec, info)  # before its mean and std are read as the model's
        mean, std = list(info.mean), list(info.std)
        resize, dataset = info.resize, info.name
    else:
        mean = getattr(cfg, "mean", None) or spec.mean
        std = getattr(cfg, "std", None) or spec.std
        resize, dataset = spec.resize, spec.dataset
    if len(mean or [0] * spec.in_channels) != spec.in_channels:
        raise DwrpruneError(f"mean {mean} needs one value per input channel "
                            f"({spec.in_channels})")
    if spec.mean is not None and mean is not None and \
            [round(v, 4) for v in spec.mean] != [round(v, 4) for v in mean]:
        tqdm.write(f"note: the model's checkpoint records mean {spec.mean}, the data is "
                   f"normalised with {mean}; the pruned model records the data's")
    if resize == "resize" and spec.resize is None:
        resize = None  # the default, as older specs (without the record) mean it
    new = (mean, std, resize, dataset)
    if new != (spec.mean, spec.std, spec.resize, spec.dataset):
        spec.mean, spec.std, spec.resize, spec.dataset = new
        set_spec(model, spec)
    return spec


def original_accuracy(model: nn.Module, data: DataSource, cfg, spec: ModelSpec) -> float:
    """The first line of a run: the original's validation accuracy under this
    preprocessing, so that a user sees at once whether it matches their own figure; with
    ``cfg.expect_accuracy``, a difference of more than a point stops the run."""
    from tqdm.auto import tqdm

    from ..training.engine import evaluate

    loader = data.loader("val", spec.resolution, subset=cfg.val_subset)
    acc = evaluate(model, loader, progress=False).accuracy * 100
    n = len(loader.dataset)
    tqdm.write(f"original model: {acc:.2f}% validation accuracy on {n} images; "
               f"{spec.contract_line()}")
    want = cfg.expect_accuracy
    if want is not None and abs(acc - want) > 1.0:
        raise DwrpruneError(
            f"the original model scores {acc:.2f}% on the validation images as dwrprune "
            f"feeds them ({spec.contract_line()}), not the {want:.2f}% expected; set the "
            "input size, resize method, mean and std to your own preprocessing")
    return acc


def check_source(data: DataSource, spec: ModelSpec) -> None:
    """What every stage checks before work: the data fits the model (where the source can
    say), there is a non-empty validation split to measure samples on, and the first batch
    of the validation and of the training split is what the model takes."""
    info = getattr(data, "info", None)
    if info is not None:
        check_data_matches(spec, info)
    check_first_batch(check_validation_split(data, spec.resolution), spec)
    try:
        train = data.loader("train", spec.resolution, shuffle=True)
    except DwrpruneError:
        raise
    except Exception as e:  # noqa: BLE001 - a user's DataSource may raise anything here
        raise DwrpruneError(f"the data source has no training split ({type(e).__name__}: "
                            f"{str(e)[:120]})") from None
    check_first_batch(train, spec, "training")


def check_first_batch(loader, spec: ModelSpec, split: str = "validation") -> None:
    """The first validation batch of a source is what the model takes: images (N, C, R, R)
    as floats with the model's channels and side, labels whole numbers in its class range.
    Checked once before any work, so a user's own source fails with one line, not mid-run."""
    try:
        batch = next(iter(loader))
    except DwrpruneError:
        raise
    except StopIteration:
        raise DwrpruneError(f"the {split} loader yields no batch") from None
    except Exception as e:  # noqa: BLE001 - a user's DataSource may raise anything here
        raise DwrpruneError(f"the data source's {split} loader fails on its first batch "
                            f"({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(batch, (tuple, list)) or len(batch) < 2 or not all(
            isinstance(t, torch.Tensor) for t in batch[:2]):
        raise DwrpruneError("a data source's loader must yield (images, labels) tensor pairs, "
                            f"got {type(batch).__name__}")
    x, y = batch[0], batch[1]
    side = spec.resolution
    if x.dim() != 4 or x.shape[1] != spec.in_channels or tuple(x.shape[2:]) != (side, side):
        raise DwrpruneError(f"the data source's {split} loader yields images of shape "
                            f"{tuple(x.shape)}; the model takes (N, {spec.in_channels}, {side}, "
                            f"{side})")
    if not x.is_floating_point():
        raise DwrpruneError(f"the data source's {split} loader yields {x.dtype} images; the "
                            "model takes float tensors (scaled and normalised)")
    if y.dim() != 1 or y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8) \
            or len(y) != len(x):
        raise DwrpruneError(f"the data source's {split} loader yields labels of shape "
                            f"{tuple(y.shape)} and type "
                            f"{y.dtype}; one whole-number class index per image is needed")
    k = spec.num_classes
    if k and len(y) and (int(y.min()) < 0 or int(y.max()) >= k):
        raise DwrpruneError(f"the data source's {split} loader yields labels "
                            f"{int(y.min())}..{int(y.max())}; "
                            f"the model has {k} classes (0..{k - 1})")


def check_validation_split(data: DataSource, resolution: int):
    """Samples and choices are made on validation data: refuse a source without any.
    Returns the validation loader it built (the first batch is checked from it)."""
    try:
        loader = data.loader("val", resolution)
        n = len(loader.dataset)
    except DwrpruneError:
        raise
    except Exception as e:  # noqa: BLE001 - a user's DataSource may raise anything here
        raise DwrpruneError(
            f"the data source has no validation split ({type(e).__name__}: {e}); dwrprune "
            "measures samples on data held out of training, never on the test set") from None
    if n == 0:
        raise DwrpruneError("the validation split is empty; raise val_fraction "
                            "(--val-fraction)")
    return loader


FinetuneFn = Callable[[nn.Module, DataLoader, int, float, int], None]


def default_finetune(model: nn.Module, loader: DataLoader, steps: int, lr: float,
                     seed: int, precision: str = "fp32", channels_last: bool = False) -> None:
    """Short fine-tune for a sample: SGD + cosine over ``steps`` batches."""
    train(model, loader, TrainConfig(steps=steps, lr=lr, seed=seed, precision=precision,
                                     channels_last=channels_last), progress=False, log=False)
