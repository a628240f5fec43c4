"""Pruning: find what can be removed, rank it, remove it.

    blocks     removable blocks (residual, transformer, plain, dense) from the traced graph
    surgery    channel and block surgery, and the records that replay it from a spec
    analysis   ``Analysis``: a model traced once (blocks, channel groups, geometry, costs)
    criteria   channel and depth criteria (each declares the data it needs)
    autobot    AutoBot's learned per-layer widths
    shrink     ``Shrinker``: exact cost queries and physical shrinking; width allocations
"""

from .shrink import Shrinker, shrink, shrink_cost

__all__ = ["Shrinker", "shrink", "shrink_cost"]
