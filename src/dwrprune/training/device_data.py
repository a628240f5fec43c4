"""Images held as one uint8 tensor and transformed a batch at a time on the compute device.

Fashion-MNIST, CIFAR and the synthetic data are small (47 MB and 150 MB as uint8), so they
stay whole on the device that trains: a batch is a gather of indices, and the augmentation
(random crop with zero padding, horizontal flip), the resize to the sample's resolution
(bilinear, antialiased) and the normalisation run on the batch there, with no worker
processes, no per-image Python and no host-to-device copy per step.

Randomness is a function of (seed, epoch) only: the order comes from the
:class:`~dwrprune.training.data.ShuffleSampler`, and each image's crop offset and flip for
the epoch are drawn at the epoch's start on the CPU from their own seeded generator.  So a run
sees the same batches on a CPU and on a GPU, and a run resumed mid-epoch continues on exactly
the batches an uninterrupted one would have seen.

:data:`DATA_PATH` names this data path in run folders and benchmark CSVs (version 1 was the
per-image torchvision pipeline, whose random numbers differ), so that a collection is never
resumed on the other one.

    >>> import dwrprune
    >>> ds = dwrprune.create_dataset("synthetic", "train", subset=8)
    >>> loader = dwrprune.make_loader(ds, batch_size=4, shuffle=True)
    >>> x, y = next(iter(loader))
    >>> tuple(x.shape), x.dtype, tuple(y.shape)
    ((4, 3, 16, 16), torch.float32, (4,))
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

DATA_PATH = 2  # 1: per-image torchvision transforms; 2: per-batch on the compute device


@lru_cache(maxsize=32)
def _stats(mean: tuple, std: tuple, device: str) -> tuple[Tensor, Tensor]:
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1).to(device)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1).to(device)
    return m, s


@dataclass(frozen=True)
class BatchTransform:
    """What a batch of uint8 images (B, C, H, W) becomes: with ``augment``, a random crop of
    the native size from the image padded by ``native // 8`` (at least 1) zero pixels on each
    side and a random horizontal flip; then a resize to ``resolution`` (bilinear,
    antialiased) where it differs from the native side, scaling to [0, 1] and
    normalisation by ``mean`` and ``std``."""

    native: int
    resolution: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool

    @property
    def padding(self) -> int:
        return max(1, self.native // 8)

    def draw(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Random parameters of ``n`` images: (n, 3) int64 rows of (row offset, column
        offset, flip)."""
        off = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=generator)
        flip = torch.randint(0, 2, (n, 1), generator=generator)
        return torch.cat([off, flip], 1)

    def __call__(self, x: Tensor, params: Tensor | None = None) -> Tensor:
        if self.augment:
            x = self._crop_flip(x, params if params is not None else self.draw(len(x)).to(
                x.device))
        x = x.float().div_(255)
        if self.resolution != x.shape[-1] or self.resolution != x.shape[-2]:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear",
                              antialias=True, align_corners=False)
        mean, std = _stats(tuple(self.mean), tuple(self.std), str(x.device))
        return x.sub_(mean).div_(std)

    def _crop_flip(self, x: Tensor, params: Tensor) -> Tensor:
        b, c, h, w = x.shape
        p = self.padding
        padded = F.pad(x, (p, p, p, p))
        dev = x.device
        rows = params[:, 0:1] + torch.arange(h, device=dev)  # (B, H)
        cols = params[:, 1:2] + torch.arange(w, device=dev)  # (B, W)
        cols = torch.where(params[:, 2:3].bool(), cols.flip(1), cols)  # flip = reversed columns
        return padded[torch.arange(b, device=dev)[:, None, None, None],
                      torch.arange(c, device=dev)[None, :, None, None],
                      rows[:, None, :, None], cols[:, None, None, :]]


_RESIDENT: dict[tuple[int, str], tuple[weakref.ref, Tensor]] = {}


def resident(t: Tensor, device: torch.device) -> Tensor:
    """``t`` on ``device``, copied there once per process (every loader of a dataset shares
    the copy)."""
    if t.device == device:
        return t
    key = (id(t), str(device))
    hit = _RESIDENT.get(key)
    if hit is not None and hit[0]() is t:
        return hit[1]
    for k in [k for k, (ref, _) in _RESIDENT.items() if ref() is None]:
        del _RESIDENT[k]
    out = t.to(device)
    _RESIDENT[key] = (weakref.ref(t), out)
    return out


def resolve_tensor_dataset(dataset) -> tuple[object, Tensor] | None:
    """(the dataset holding the tensors, indices into it) for a tensor dataset, possibly
    wrapped in ``Subset``\\ s; None for anything else."""
    from torch.utils.data import Subset

    index = None
    while isinstance(dataset, Subset):
        sub = torch.as_tensor(dataset.indices, dtype=torch.long)
        index = sub if index is None else sub[index]
        dataset = dataset.dataset
    if not (hasattr(dataset, "images") and isinstance(getattr(dataset, "transform", None),
                                                      BatchTransform)):
        return None
    if index is None:
        index = torch.arange(len(dataset.labels))
    return dataset, index


class TensorLoader:
    """A DataLoader for tensor datasets whose batches are made on the compute device.

    It has what dwrprune reads of a DataLoader (``dataset``, ``batch_size``, ``sampler``,
    ``len``, iteration) and :meth:`on`, which returns the same loader yielding batches on
    another device (the images copied there once).  Build it with
    :func:`dwrprune.make_loader` (or :func:`tensor_loader`); any other dataset gets a torch
    DataLoader.  ``base`` and ``index``: what :func:`resolve_tensor_dataset` found."""

    def __init__(self, dataset, base, index: Tensor, batch_size: int, sampler=None,
                 seed: int = 0, drop_last: bool = False):
        self.base, self.index = base, index
        self.dataset, self.batch_size, self.sampler = dataset, batch_size, sampler
        self.seed, self.drop_last, self.epoch = seed, drop_last, 0
        self.device = torch.device("cpu")

    @property
    def transform(self) -> BatchTransform:
        return self.base.transform

    def on(self, device: str | torch.device) -> TensorLoader:
        out = copy.copy(self)
        out.device = torch.device(device)
        return out

    def set_epoch(self, epoch: int) -> None:
        """The epoch fixes the order (through the sampler) and the augmentation."""
        self.epoch = epoch
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def shard(self, rank: int, num_shards: int, train: bool) -> TensorLoader:
        """Rank ``rank``'s part: for training the sampler's shard at 1/N of the batch, for
        evaluation every N-th image."""
        out = copy.copy(self)
        if train and self.sampler is not None:
            out.sampler = self.sampler.shard(rank, num_shards)
            out.batch_size = self.batch_size // num_shards
        else:
            out.index = self.index[rank::num_shards]
        return out

    def _order(self) -> Tensor:
        if self.sampler is not None:
            return torch.as_tensor(list(self.sampler), dtype=torch.long)
        return torch.arange(len(self.index))

    def __len__(self) -> int:
        n = len(self.sampler) if self.sampler is not None else len(self.index)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        dev, tf = self.device, self.transform
        images, labels = resident(self.base.images, dev), resident(self.base.labels, dev)
        order = self._order().to(dev, non_blocking=True)
        index = self.index.to(dev, non_blocking=True)
        params = None
        if tf.augment:  # per image (not per position): shards and resumes see the same
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % 2**62 + 1)
            params = tf.draw(len(self.index), g).to(dev, non_blocking=True)
        bs = self.batch_size
        for b in range(len(self)):
            pos = order[b * bs:(b + 1) * bs]
            ids = index[pos]
            yield tf(images[ids], None if params is None else params[pos]), labels[ids]


def tensor_loader(dataset, batch_size: int, sampler=None, seed: int = 0,
                  drop_last: bool = False) -> TensorLoader | None:
    """A :class:`TensorLoader` over ``dataset``, or None when it is not a tensor dataset."""
    resolved = resolve_tensor_dataset(dataset)
    if resolved is None:
        return None
    return TensorLoader(dataset, *resolved, batch_size, sampler, seed, drop_last)
