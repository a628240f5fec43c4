"""Data-parallel training under ``torchrun`` (torch.distributed), invisible otherwise.

Launched as ``torchrun --nproc-per-node N -m dwrprune train ...`` (or ``... finetune``), the
environment carries WORLD_SIZE/RANK; :func:`init` then joins the process group (gloo on
CPU, nccl on GPU) and the one training loop in :mod:`dwrprune.training.engine`:

* wraps the model in DistributedDataParallel;
* gives each rank every N-th index of the same shuffled order, with ``batch_size / N``
  samples per rank, so the ranks' batches together are exactly the single-process batch
  (for loaders built by :func:`dwrprune.training.data.make_loader`);
* sums loss/accuracy counters across ranks, shards evaluation without padding (so
  accuracies count every sample once);
* leaves checkpoints, logs and progress bars to rank 0.

Without WORLD_SIZE > 1 every function here is a no-op and no process group is started.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset

from ..errors import DwrpruneError


def launched() -> bool:
    """True when started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_rank() -> int:
    """This process's index on its machine (torchrun's LOCAL_RANK; 0 otherwise)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def init() -> bool:
    """Join the process group torchrun describes (once); True when running distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if not launched():
        return False
    if not dist.is_available():
        raise DwrpruneError("this torch build has no torch.distributed; run without torchrun")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend)
    return True


def shutdown(wait: bool = True) -> None:
    """Leave the process group cleanly before the process exits.

    Without it gloo's background threads are torn down by the C++ runtime at exit, and a
    rank can abort ("terminate called without an active exception") after its work is done.
    ``wait`` first waits for every rank (the normal end); after an error a rank leaves
    without waiting, since the others may never reach the barrier.
    """
    if dist.is_available() and dist.is_initialized():
        try:
            if wait and dist.get_world_size() > 1:
                dist.barrier()
        finally:
            dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Only rank 0 writes checkpoints, logs and reports."""
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def sum_across(*values: float) -> list[float]:
    """Element-wise sum over ranks (float64, so counts stay exact)."""
    if not active():
        return list(values)
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"  # nccl reduces GPU tensors
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def wrap(model: nn.Module) -> nn.Module:
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    p = next(model.parameters(), None)
    if p is not None and p.device.type == "cuda":
        return DistributedDataParallel(model, device_ids=[p.device.index])
    return DistributedDataParallel(model)


def _like(loader: DataLoader, dataset, batch_size: int, sampler=None) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                      drop_last=loader.drop_last, pin_memory=loader.pin_memory,
                      generator=loader.generator)


def shard_train_loader(loader: DataLoader) -> DataLoader:
    """This rank's part of a training loader: same global batch, 1/N of it per rank."""
    if not active():
        return loader
    from .data import ShuffleSampler

    n = world_size()
    if loader.batch_size is None or loader.batch_size % n:
        raise DwrpruneError(f"under torchrun the batch size ({loader.batch_size}) is the global "
                            f"batch and must be divisible by the number of processes ({n})")
    if hasattr(loader, "shard"):  # a TensorLoader
        return loader.shard(rank(), n, train=True)
    sampler = loader.sampler
    if isinstance(sampler, ShuffleSampler):
        sampler = sampler.shard(rank(), n)
    else:  # a user's loader: torch's sampler, a different (but still disjoint) order
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(loader.dataset, n, rank(),
                                     shuffle=not isinstance(sampler,
                                                            torch.utils.data.SequentialSampler))
    return _like(loader, loader.dataset, loader.batch_size // n, sampler)


def shard_eval_loader(loader: DataLoader) -> DataLoader:
    """Every N-th sample for this rank, no padding: summed counts cover each sample once."""
    if not active():
        return loader
    if hasattr(loader, "shard"):  # a TensorLoader
        return loader.shard(rank(), world_size(), train=False)
    idx = list(range(rank(), len(loader.dataset), world_size()))
    return _like(loader, Subset(loader.dataset, idx), loader.batch_size)
