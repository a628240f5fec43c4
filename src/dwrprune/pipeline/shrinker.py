"""The one place a pipeline config becomes a :class:`~dwrprune.pruning.shrink.Shrinker`:
sample jobs,
the final stage and the benchmark all build theirs here, so every option a config holds
(criteria, ``round_to``, width allocation, transitions) reaches every shrink."""

from __future__ import annotations

from torch import nn

from ..io.spec import spec_of
from ..pruning.shrink import Shrinker, data_needs
from .data import DataSource


def criterion_loaders(cfg, data: DataSource | None, resolution: int,
                      needs: frozenset[str]) -> dict:
    """The loaders the criteria need (``needs`` from :func:`dwrprune.pruning.shrink.data_needs`)."""
    if data is None or not needs:
        return {}
    out = {}
    if "train" in needs:
        out["train_loader"] = data.loader("train", resolution, shuffle=True,
                                          subset=cfg.train_subset, seed=cfg.seed)
    if "val" in needs:
        out["val_loader"] = data.loader("val", resolution, subset=cfg.val_subset)
    return out


def build_shrinker(model: nn.Module, cfg, data: DataSource | None = None, *,
                   block_order: list[str] | None = None,
                   block_order_criterion: str | None = None) -> Shrinker:
    """The Shrinker ``cfg`` describes for ``model``.

    With a saved ``block_order`` (the ranking made at collection time) the depth criterion
    is not run again, and the spec records ``block_order_criterion`` as what ranked the
    blocks.  Without ``data`` the shrinker answers cost queries only: criteria that need data
    are replaced by data-free ones with the same exact MACs (uniform width, weight norm)."""
    depth = cfg.depth_criterion
    if block_order is not None:
        depth = "weight_norm"  # the ranking is given: no criterion runs
        block_order_criterion = block_order_criterion or cfg.depth_criterion
    channel, alloc = cfg.channel_criterion, cfg.width_allocation
    if data is None:
        needs_data = data_needs(depth, channel, alloc)
        if needs_data:
            depth = "weight_norm"
            channel = "l1" if data_needs(channel_criterion=channel) else channel
            alloc = "uniform"
    needs = data_needs(depth, channel, alloc)
    res = spec_of(model).resolution
    return Shrinker(model, transitions=cfg.transitions, depth_criterion=depth,
                    channel_criterion=channel, round_to=cfg.round_to,
                    criterion_data=criterion_loaders(cfg, data, res, needs),
                    block_order=block_order, block_order_criterion=block_order_criterion,
                    width_allocation=alloc, autobot_steps=cfg.autobot_steps,
                    ignored_layers=cfg.ignore or None, blocks=cfg.blocks)


def run_shrinker(run, model: nn.Module, cfg, data: DataSource | None = None) -> Shrinker:
    """The original model's shrinker with the block ranking ``run`` saved at collection
    (what the plan and final stages prune with).  Without ``data``: cost queries only."""
    order, criterion = run.block_ranking()
    return build_shrinker(model, cfg, data, block_order=order, block_order_criterion=criterion)
