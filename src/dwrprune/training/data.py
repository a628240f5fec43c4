"""Datasets: one ``create_dataset(name, split, ...)`` for every source dwrprune reads.

Splits are ``train`` and ``val`` (a deterministic hold-out of the training set, used for every
choice dwrprune makes), ``trainval`` (the whole training set) and ``test`` (kept for final
reporting only).  ``resolution`` resizes every image in the data pipeline, never inside the
network, so that a resolution-pruned model's MACs are its real cost.

In-memory sources (Fashion-MNIST, CIFAR, synthetic) are kept as uint8 tensors, cached per
process, and transformed a batch at a time on the compute device
(:mod:`dwrprune.training.device_data`); image folders are read by a DataLoader with
torchvision transforms per image, as their users read them.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from ..errors import DwrpruneError
from ..registry import Registry
from .device_data import BatchTransform, tensor_loader

SPLITS = ("train", "val", "trainval", "test")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about its data: classes, channels, native size, statistics."""

    name: str
    num_classes: int
    in_channels: int
    resolution: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: str = "resize"  # how images reach the model's side: plain "resize" or "center-crop"


class ImageTensorDataset(Dataset):
    """uint8 images (N, C, H, W) + int64 labels and the :class:`BatchTransform` that makes
    them model inputs.  :func:`make_loader` transforms whole batches on the device; indexing
    one image applies the same transform to it alone (augmenting with the global RNG)."""

    def __init__(self, images: Tensor, labels: Tensor, transform: BatchTransform,
                 info: DatasetInfo):
        self.images, self.labels, self.transform, self.info = images, labels, transform, info

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.transform(self.images[i:i + 1])[0], int(self.labels[i])


class SubsetWithInfo(torch.utils.data.Subset):
    """``Subset`` that keeps the parent's ``info``."""

    @property
    def info(self) -> DatasetInfo:
        return self.dataset.info


# ---------------------------------------------------------------------------- file readers
def _open_maybe_gz(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: Path) -> Tensor:
    """Read an IDX file (the MNIST format), gzipped or not, into a uint8 tensor."""
    try:
        with _open_maybe_gz(path) as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DwrpruneError(f"cannot read IDX file {path}: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DwrpruneError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    if not 1 <= ndim <= 4 or len(data) < 4 + 4 * ndim:
        raise DwrpruneError(f"{path} is not an image or label IDX file: its header claims "
                            f"{ndim} dimensions (1 to 4 expected) or is cut short")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    expected = 4 + 4 * ndim + math.prod(dims)
    if len(data) != expected:
        raise DwrpruneError(
            f"{path} is truncated or corrupt: {len(data)} bytes, expected {expected}")
    return torch.frombuffer(bytearray(data[4 + 4 * ndim :]), dtype=torch.uint8).reshape(dims)


def _find(root: Path, stem: str) -> Path | None:
    for cand in (root / stem, root / f"{stem}.gz"):
        if cand.exists():
            return cand
    return None


@lru_cache(maxsize=4)
def _load_fashion_mnist(root: Path, train: bool) -> tuple[Tensor, Tensor]:
    prefix = "train" if train else "t10k"
    stems = [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]
    paths = [_find(root, s) for s in stems]
    if None in paths:
        missing = [s for s, p in zip(stems, paths) if p is None]
        raise DwrpruneError(
            f"Fashion-MNIST files missing in {root}: {', '.join(missing)} (.gz or plain). "
            "Install them with `apt-get install dataset-fashion-mnist` (Debian) or pass "
            "--data-dir to a folder holding the four IDX files."
        )
    images, labels = (read_idx(p) for p in paths)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DwrpruneError(f"Fashion-MNIST files in {root} have inconsistent shapes "
                            f"{tuple(images.shape)} and {tuple(labels.shape)}")
    labels = labels.long()
    check_labels(labels, 10, str(paths[1]))
    return images.unsqueeze(1).contiguous(), labels


def check_labels(labels: Tensor, num_classes: int, where: str) -> None:
    """Labels are whole numbers in [0, num_classes), or one error naming the file."""
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DwrpruneError(f"{where}: labels must be in [0, {num_classes - 1}], found "
                            f"{int(labels.min())}..{int(labels.max())}; the file is damaged")


class _ArraysOnly(pickle.Unpickler):
    """Unpickles only what a CIFAR batch holds: dicts, lists, bytes, numbers and numpy
    arrays.  Any other global (``os.system``, ``builtins.eval``, ...) is refused, so a
    crafted file cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray",
                                                          "_reconstruct"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused global {module}.{name} (a CIFAR batch holds "
                                         "only arrays, lists, dicts and bytes)")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            d = _ArraysOnly(f, encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user problem
        raise DwrpruneError(f"cannot read CIFAR batch file {path}: {e}") from None
    if not isinstance(d, dict):
        raise DwrpruneError(f"{path} is not a CIFAR batch (a {type(d).__name__}, not a dict)")
    return d


@lru_cache(maxsize=4)
def _load_cifar(root: Path, num_classes: int, train: bool) -> tuple[Tensor, Tensor]:
    folder = "cifar-10-batches-py" if num_classes == 10 else "cifar-100-python"
    if (root / folder).is_dir():
        root = root / folder
    if num_classes == 10:
        names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        label_key = b"labels"
    else:
        names = ["train"] if train else ["test"]
        label_key = b"fine_labels"
    missing = [n for n in names if not (root / n).exists()]
    if missing:
        raise DwrpruneError(
            f"CIFAR-{num_classes} files missing in {root}: {', '.join(missing)}. Pass --data-dir "
            f"to the python-pickle folder ({folder}) from the CIFAR website."
        )
    xs, ys = [], []
    for n in names:
        path = root / n
        d = _unpickle(path)
        if b"data" not in d or label_key not in d:
            raise DwrpruneError(f"{path} is not a CIFAR-{num_classes} batch (keys "
                                f"{list(d)[:6]})")
        try:
            x = torch.as_tensor(d[b"data"], dtype=torch.uint8)
            y = torch.as_tensor(d[label_key], dtype=torch.long)
        except (TypeError, ValueError, RuntimeError, OverflowError):
            raise DwrpruneError(f"{path}: data must be bytes of images and labels whole "
                                "numbers; the file is damaged") from None
        if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or y.ndim != 1 or len(x) != len(y):
            raise DwrpruneError(f"{path}: {tuple(x.shape)} image rows of 3072 bytes and "
                                f"{tuple(y.shape)} labels do not match (one 32x32 RGB image "
                                "per label); the file is damaged")
        check_labels(y, num_classes, str(path))
        xs.append(x.reshape(-1, 3, 32, 32))
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


@lru_cache(maxsize=8)
def _make_synthetic(num_classes: int, in_channels: int, resolution: int, size: int,
                    seed: int) -> tuple[Tensor, Tensor]:
    """Learnable random images: each class has its own mean pattern, plus noise."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(num_classes, in_channels, resolution, resolution, generator=g)
    labels = torch.arange(size) % num_classes
    labels = labels[torch.randperm(size, generator=g)]
    noise = torch.randn(size, in_channels, resolution, resolution, generator=g) * 0.15
    imgs = (protos[labels] * 0.7 + 0.15 + noise).clamp(0, 1)
    return (imgs * 255).round().to(torch.uint8), labels


# ---------------------------------------------------------------------------- transforms
def build_transform(info: DatasetInfo, resolution: int, augment: bool) -> BatchTransform:
    """Augment at native size (random crop with padding, flip), resize, scale, normalise."""
    return BatchTransform(info.resolution, resolution, tuple(info.mean), tuple(info.std),
                          augment)


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Deterministic (train, val) index split of a training set of size ``n``."""
    if not 0.0 < val_fraction < 1.0:
        raise DwrpruneError(f"val_fraction must be in (0, 1), got {val_fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(round(n * val_fraction)))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


# ---------------------------------------------------------------------------- sources
def _resolve_dir(data_dir: str | os.PathLike | None, default: Path | None, what: str) -> Path:
    if data_dir is None:
        if default is None:
            raise DwrpruneError(f"dataset {what!r} needs data_dir (--data-dir): it has no "
                                "default location")
        data_dir = default
    root = Path(data_dir)
    if not root.is_dir():
        hint = " (apt-get install dataset-fashion-mnist)" if what == "fashion-mnist" else ""
        raise DwrpruneError(f"data folder {root} for {what!r} does not exist{hint}")
    return root


DATASETS: Registry = Registry("dataset")
# Each entry: fn(data_dir, train, **options) -> (images uint8 N x C x H x W, labels, info), or,
# for image files read lazily, a Dataset with an ``info`` (``loads_files = True``).


@DATASETS.register(name="fashion-mnist")
def _fashion_mnist(data_dir, train: bool, **_) -> tuple[Tensor, Tensor, DatasetInfo]:
    root = _resolve_dir(data_dir, FASHION_MNIST_DIR, "fashion-mnist")
    x, y = _load_fashion_mnist(root.resolve(), train)
    return x, y, DatasetInfo("fashion-mnist", 10, 1, 28, (0.2860,), (0.3530,))


def _cifar(name: str, k: int, mean, std):
    def source(data_dir, train: bool, **_) -> tuple[Tensor, Tensor, DatasetInfo]:
        x, y = _load_cifar(_resolve_dir(data_dir, None, name).resolve(), k, train)
        return x, y, DatasetInfo(name, k, 3, 32, mean, std)

    return source


DATASETS.register(_cifar("cifar10", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
                  name="cifar10")
DATASETS.register(_cifar("cifar100", 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
                  name="cifar100")


@DATASETS.register(name="synthetic")
def _synthetic(data_dir, train: bool, num_classes: int = 10, in_channels: int = 3,
               native_resolution: int = 16, size: int = 512, test_size: int = 128, **_
               ) -> tuple[Tensor, Tensor, DatasetInfo]:
    k, c, res = int(num_classes), int(in_channels), int(native_resolution)
    x, y = _make_synthetic(k, c, res, int(size) if train else int(test_size), 0 if train else 1)
    return x, y, DatasetInfo("synthetic", k, c, res, (0.5,) * c, (0.25,) * c)


def _read_image(path: str):
    """PIL RGB image; a file that cannot be decoded is an error naming it."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds for a bad file
        raise DwrpruneError(f"image file {path} cannot be read ({type(e).__name__}); remove "
                            "or replace it") from None


_VERIFIED: dict[tuple[str, int, int], tuple[int, int]] = {}  # (path, bytes, mtime): (w, h)


def _file_key(p: str) -> tuple[str, int, int]:
    st = os.stat(p)
    return (p, st.st_size, st.st_mtime_ns)


def _check_images(paths: list[str], limit: int = 3) -> None:
    """Every image file is whole (PIL's ``verify`` reads the file through, without decoding
    the pixels).  A corrupt or truncated file stops the run at once, naming it, rather than
    an epoch later."""
    from PIL import Image

    bad = []
    for p in paths:
        try:
            key = _file_key(p)
            if key in _VERIFIED:  # every split's loaders re-create the dataset: read once
                continue
            with Image.open(p) as img:
                size = img.size
                img.verify()
            _VERIFIED[key] = size
        except Exception:  # noqa: BLE001
            bad.append(p)
    if bad:
        raise DwrpruneError(f"{len(bad)} image file(s) cannot be read, e.g. "
                            f"{', '.join(bad[:limit])}; remove or replace them")


def _check_no_link_loops(root: Path) -> None:
    """Image folders are walked following links (torchvision's ``ImageFolder``); a link
    back to a folder above it would list every image many times over."""
    seen: set[str] = set()
    for here, _dirs, _ in os.walk(root, followlinks=True):
        real = os.path.realpath(here)
        if real in seen:
            raise DwrpruneError(f"imagefolder {root}: {here} leads back to {real} (a "
                                "symbolic-link loop); its images would be counted again and "
                                "again: remove the link")
        seen.add(real)


def _check_same_classes(root: Path) -> None:
    """train/, val/ and test/ hold the same class folders: labels are indices into the sorted
    class names, so a split with another class set would score one class as another."""
    splits = {s: sorted(d.name for d in (root / s).iterdir() if d.is_dir())
              for s in ("train", "val", "test") if (root / s).is_dir()}
    names = {tuple(v) for v in splits.values()}
    if len(names) > 1:
        ref = splits.get("train", next(iter(splits.values())))
        diff = {s: sorted(set(v) ^ set(ref)) for s, v in splits.items() if v != ref}
        raise DwrpruneError(f"imagefolder {root}: the splits hold different classes (train: "
                            f"{ref[:8]}; differing in {diff}); every split needs the same "
                            "class folders, or a class would be scored as another")


RESIZE_POLICIES = ("resize", "center-crop")
AUGMENT_POLICIES = ("mild", "imagenet")


def _image_folders(root: Path) -> dict[str, Path]:
    """Which folder serves which split.  ``train/`` is required; ``test/`` is the test split;
    ``val/``, beside a ``test/``, is the validation split (otherwise validation images are
    held out of ``train/``, and a lone ``val/`` is the test split)."""
    has = {s: (root / s).is_dir() for s in ("train", "val", "test")}
    if not has["train"] or not (has["val"] or has["test"]):
        raise DwrpruneError(
            f"imagefolder root {root} needs a train/ folder and a test/ (or val/) folder, each "
            "with one sub-folder per class (a val/ beside test/ is the validation split)")
    out = {"train": root / "train", "test": root / ("test" if has["test"] else "val")}
    if has["val"] and has["test"]:
        out["val"] = root / "val"
    return out


@lru_cache(maxsize=16)
def _folder_statistics(folder: str, side: int, count: int, limit: int = 2000
                       ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of a deterministic sample of up to ``limit`` training images,
    each resized plainly to ``side`` (what the model sees before normalisation)."""
    from torchvision.datasets import ImageFolder

    paths = [p for p, _ in ImageFolder(folder, loader=_read_image).samples]
    pick = torch.randperm(len(paths), generator=torch.Generator().manual_seed(0))[:limit]
    resize = v2.Compose([v2.ToImage(), v2.Resize((side, side), antialias=True),
                         v2.ToDtype(torch.float32, scale=True)])
    x = torch.stack([resize(_read_image(paths[i])) for i in pick.tolist()])
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return (tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std))


def _native_side(paths: list[str]) -> int:
    """The images' own side: the most common shorter side among them."""
    sides = [min(_VERIFIED[_file_key(p)]) for p in paths]
    return max(set(sides), key=lambda v: (sides.count(v), v))


def imagefolder_transform(native: int, res: int, mean, std, augment: str | None,
                          resize: str = "resize") -> v2.Compose:
    """Training (``augment`` "mild": crop with padding and flip at the native side, as for
    tensor data; "imagenet": RandomResizedCrop) or evaluation (``augment`` None: a plain
    resize to ``res``, or resize-then-center-crop with ``resize="center-crop"``)."""
    steps: list = [v2.ToImage()]
    if augment == "imagenet":
        steps += [v2.RandomResizedCrop(res, antialias=True), v2.RandomHorizontalFlip()]
    elif augment == "mild":
        steps += [v2.Resize((native, native), antialias=True),
                  v2.RandomCrop(native, padding=max(1, native // 8)), v2.RandomHorizontalFlip(),
                  v2.Resize((res, res), antialias=True)]
    elif resize == "center-crop":
        steps += [v2.Resize(int(round(res * 256 / 224)), antialias=True), v2.CenterCrop(res)]
    else:
        steps += [v2.Resize((res, res), antialias=True)]
    return v2.Compose(steps + [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


def _check_choice(what: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise DwrpruneError(f"{what} {value!r} is not known; choose {' or '.join(choices)}")


def _check_stats(what: str, v) -> tuple[float, ...] | None:
    if v is None:
        return None
    if isinstance(v, (int, float)):
        v = [v]
    ok = isinstance(v, (list, tuple)) and 1 <= len(v) <= 4096 and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
        for x in v)
    if not ok or (what == "std" and min(v) <= 0):
        raise DwrpruneError(f"{what} must be one finite number per channel (or one for all)"
                            f"{', above 0' * (what == 'std')}, got {v!r}")
    return tuple(float(x) for x in v)


def _per_channel(v: tuple[float, ...] | None, channels: int) -> tuple[float, ...] | None:
    return v * channels if v is not None and len(v) == 1 else v


@DATASETS.register(name="imagefolder")
def _imagefolder(data_dir, split: str, resolution: int | None = None, augment: bool = False,
                 input_size: int | None = None, mean=None, std=None, resize: str = "resize",
                 train_augment: str = "mild", **_):
    """An image folder, read as its user reads it: native side from the images (or
    ``input_size``), a plain resize for evaluation, mild augmentation for training, mean and
    std computed from the training images (or given)."""
    from torchvision.datasets import ImageFolder

    _check_choice("resize policy", resize, RESIZE_POLICIES)
    _check_choice("training augmentation", train_augment, AUGMENT_POLICIES)
    mean, std = (_per_channel(_check_stats(k, v), 3) for k, v in (("mean", mean), ("std", std)))
    if input_size is not None and (not isinstance(input_size, int) or isinstance(
            input_size, bool) or not 1 <= input_size <= 8192):
        raise DwrpruneError(f"input size must be a whole number of pixels in [1, 8192], got "
                            f"{input_size!r}")
    root = _resolve_dir(data_dir, None, "imagefolder")
    folders = _image_folders(root)
    _check_no_link_loops(root)
    _check_same_classes(root)

    def read(folder: Path) -> ImageFolder:
        try:
            ds = ImageFolder(str(folder), loader=_read_image)
        except (FileNotFoundError, OSError) as e:
            raise DwrpruneError(f"imagefolder {folder}: {e}") from None
        _check_images([p for p, _ in ds.samples])
        return ds

    train_ds = read(folders["train"])
    native = input_size or _native_side([p for p, _ in train_ds.samples])
    if mean is None or std is None:
        fm, fs = _folder_statistics(str(folders["train"]), native, len(train_ds))
        mean, std = mean or fm, std or fs
    info = DatasetInfo("imagefolder", len(train_ds.classes), 3, native, mean, std, resize)
    if split in ("train", "trainval"):
        ds = train_ds
    else:
        ds = read(folders.get(split, folders["train"]) if split != "test" else folders["test"])
    res = resolution or native
    ds.transform = imagefolder_transform(native, res, mean, std,
                                         train_augment if augment else None, resize)
    ds.info = info
    ds.presplit = split == "val" and "val" in folders or (split == "train" and "val" in folders)
    return ds


_imagefolder.loads_files = True


def create_dataset(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    resolution: int | None = None,
    augment: bool | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    subset: int | None = None,
    subset_seed: int = 0,
    **kwargs,
) -> Dataset:
    """Build a dataset split; the returned object has an ``info`` (:class:`DatasetInfo`).

    ``resolution`` is the side length images are resized to (default: native).  ``augment``
    defaults to True for ``train``/``trainval``.  ``subset`` keeps a deterministic random subset
    of that many samples (for short fine-tunes).  Extra keywords configure ``synthetic``
    (num_classes, in_channels, native_resolution, size, test_size).
    """
    source = DATASETS.get(name)
    if split not in SPLITS:
        raise DwrpruneError(f"unknown split {split!r}; available: {', '.join(SPLITS)}")
    if resolution is not None and (not isinstance(resolution, int) or resolution < 1):
        raise DwrpruneError(f"resolution must be a positive integer, got {resolution!r}")
    if augment is None:
        augment = split in ("train", "trainval")
    train_side = split != "test"

    if getattr(source, "loads_files", False):
        ds = source(data_dir, split, resolution=resolution, augment=augment, **kwargs)
        n = len(ds)
    else:
        image_only = sorted(k for k in ("input_size", "resize", "train_augment")
                            if kwargs.get(k) not in (None, "resize", "mild"))
        if image_only:
            raise DwrpruneError(f"{', '.join(image_only)} apply to image folders only; "
                                f"{name!r} has a fixed native size and a plain resize")
        mean, std = (_check_stats(k, kwargs.pop(k, None)) for k in ("mean", "std"))
        x, y, info = source(data_dir, train_side, **kwargs)
        if mean is not None or std is not None:
            c = info.in_channels
            info = dataclasses.replace(info, mean=_per_channel(mean, c) or info.mean,
                                       std=_per_channel(std, c) or info.std)
        if len(info.mean) != info.in_channels or len(info.std) != info.in_channels:
            raise DwrpruneError(f"mean and std need {info.in_channels} value(s) for {name!r}")
        ds = ImageTensorDataset(x, y, build_transform(info, resolution or info.resolution,
                                                      augment), info)
        n = len(y)
    if ds.info.num_classes is not None and ds.info.num_classes < 2:
        raise DwrpruneError(f"dataset {name!r} has {ds.info.num_classes} class; a classifier "
                            "needs at least two (one class trains to a meaningless 100%)")
    if split in ("train", "val") and not getattr(ds, "presplit", False):
        tr, va = split_indices(n, val_fraction, split_seed)
        ds = SubsetWithInfo(ds, (tr if split == "train" else va).tolist())
    if subset is not None:
        if not isinstance(subset, int) or subset < 1:
            raise DwrpruneError(f"subset must be a positive integer, got {subset!r}")
        if subset < len(ds):
            pick = torch.randperm(len(ds), generator=torch.Generator().manual_seed(subset_seed))
            ds = SubsetWithInfo(ds, pick[:subset].sort().values.tolist())
    return ds


def dataset_info(name: str, data_dir=None, **kwargs) -> DatasetInfo:
    """The :class:`DatasetInfo` of a dataset, without building transforms."""
    return create_dataset(name, "test", data_dir=data_dir, **kwargs).info


class ShuffleSampler(torch.utils.data.Sampler[int]):
    """A random order fixed by (seed, epoch): ``set_epoch`` picks the epoch, so training
    resumes on exactly the batches it would have seen.  ``shard(rank, n)`` is rank
    ``rank``'s every-n-th slice of the same order (padded by wrapping to a multiple of n),
    which makes n data-parallel ranks see, together, the single-process batches."""

    def __init__(self, size: int, seed: int = 0, rank: int = 0, num_shards: int = 1):
        self.size, self.seed, self.rank, self.num_shards = size, seed, rank, num_shards
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shard(self, rank: int, num_shards: int) -> ShuffleSampler:
        out = ShuffleSampler(self.size, self.seed, rank, num_shards)
        out.epoch = self.epoch
        return out

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=g).tolist()
        if self.num_shards > 1:
            order += order[: len(self) * self.num_shards - self.size]
        return iter(order[self.rank::self.num_shards])

    def __len__(self) -> int:
        return -(-self.size // self.num_shards)


def make_loader(dataset: Dataset, batch_size: int = 128, shuffle: bool = False, seed: int = 0,
                num_workers: int = 0, drop_last: bool = False,
                collate_fn: Callable | None = None) -> DataLoader:
    """A loader whose shuffling is reproducible, resumable and shardable across
    data-parallel ranks (:class:`ShuffleSampler`).  A tensor dataset (Fashion-MNIST, CIFAR,
    synthetic, or a subset of one) gets a :class:`~.device_data.TensorLoader`, which makes
    each batch on the compute device; anything else a torch DataLoader (``num_workers``
    processes, pinned memory where a GPU is there)."""
    if batch_size < 1:
        raise DwrpruneError(f"batch_size must be >= 1, got {batch_size}")
    sampler = ShuffleSampler(len(dataset), seed) if shuffle else None
    fast = tensor_loader(dataset, batch_size, sampler, seed, drop_last) if collate_fn is None \
        else None
    if fast is not None:
        return fast
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(seed), drop_last=drop_last,
                      collate_fn=collate_fn, pin_memory=torch.cuda.is_available())


class ResizeCollate:
    """Collate a batch (with ``collate``, default torch's), then resize its images to
    ``side`` x ``side`` (bilinear, antialiased) where they are another size: how the
    resolution axis reaches data dwrprune did not load itself."""

    def __init__(self, side: int, collate: Callable | None = None):
        self.side, self.collate = side, collate

    def __call__(self, batch):
        from torch.utils.data import default_collate

        out = (self.collate or default_collate)(batch)
        if not isinstance(out, (tuple, list)) or not out or not isinstance(out[0], Tensor):
            return out
        x = out[0]
        if x.dim() == 4 and x.is_floating_point() and tuple(x.shape[-2:]) != (self.side,) * 2:
            x = torch.nn.functional.interpolate(x, size=(self.side, self.side), mode="bilinear",
                                                antialias=True, align_corners=False)
            out = (x, *out[1:]) if isinstance(out, tuple) else [x, *out[1:]]
        return out
