"""One registry type for every name -> thing table (criteria, width allocations, predictor
families, datasets, executors, block kinds, presets, models, latency targets).

An entry is registered under a name with a decorator and declares what it ``needs`` from the
caller: data (``"train"``, ``"val"``) or hardware (``"gpu"``).  The registry is the one place
that decides whether those needs are met and builds the entry, so an unknown name, or a
criterion that needs data it was not given, fails the same way everywhere::

    from dwrprune.pruning.criteria import CHANNEL_CRITERIA

    @CHANNEL_CRITERIA.register
    class FirstChannels:
        '''Keep the first channels (an example; higher score = keep).'''
        name = "first"
        needs = frozenset()

        def group_scores(self, group, dg):
            n = len(group[0][1])
            return torch.arange(n, 0, -1, dtype=torch.float32)

    Shrinker(model, channel_criterion="first").shrink(1.0, 0.5, 1.0)

Entries build themselves: ``Registry.create(name, **context)`` calls the entry's
``from_context(**context)`` classmethod if it has one (it picks what it needs from the
context: loaders, seeds, steps), else calls the entry with no arguments.  Lookup is kept apart
from construction (as timm's ``create_act`` does): :meth:`Registry.get` only finds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from .errors import DwrpruneError

T = TypeVar("T")

# What each need means, for the one error message a missing need gives.
NEEDS = {
    "train": ("train_loader", "training data"),
    "val": ("val_loader", "validation data"),
}


class Registry(Generic[T]):
    """Names -> entries of one ``kind`` (``"channel criterion"``, ``"dataset"``, ...)."""

    def __init__(self, kind: str, hint: str = ""):
        self.kind = kind
        self.hint = hint  # said after "available: ..." when a name is unknown
        self._entries: dict[str, T] = {}

    # -------------------------------------------------------------------- registration
    def register(self, entry: T | None = None, *, name: str | None = None) -> Any:
        """Register ``entry`` (a class or function) under ``name`` (default: its ``name``
        attribute, else its ``__name__``).  Usable as ``@reg.register`` or
        ``@reg.register(name="x")``."""

        def add(obj: T) -> T:
            key = name or getattr(obj, "name", None) or getattr(obj, "__name__", None)
            if not isinstance(key, str) or not key:
                raise DwrpruneError(f"a {self.kind} needs a name to be registered")
            if key in self._entries:
                raise DwrpruneError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = obj
            return obj

        return add if entry is None else add(entry)

    def unregister(self, name: str) -> None:
        """Remove an entry (tests register temporary ones)."""
        self._entries.pop(name, None)

    # -------------------------------------------------------------------- lookup
    def get(self, name: str) -> T:
        """The entry registered as ``name``, or one clear error naming what is available."""
        if not isinstance(name, str) or name not in self._entries:
            shown = repr(name) if isinstance(name, str) else f"of type {type(name).__name__}"
            hint = f"; {self.hint}" if self.hint else ""
            raise DwrpruneError(f"unknown {self.kind} {shown}; available: "
                                f"{', '.join(self._entries)}{hint}")
        return self._entries[name]

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"

    # -------------------------------------------------------------------- needs and building
    def needs(self, entry: str | Any) -> frozenset[str]:
        """What a registered name, or an object given in its place, needs."""
        obj = self.get(entry) if isinstance(entry, str) else entry
        return frozenset(getattr(obj, "needs", frozenset()))

    def check_needs(self, entry: str | Any, context: dict) -> None:
        """One error for the needs the context does not meet (data not given, no GPU)."""
        label = entry if isinstance(entry, str) else getattr(entry, "name", type(entry).__name__)
        needs = self.needs(entry)
        if "gpu" in needs:
            import torch

            if not torch.cuda.is_available():
                raise DwrpruneError(f"the {label} {self.kind} needs a CUDA GPU, and this "
                                    "machine has no CUDA GPU (torch.cuda.is_available() is "
                                    "False)")
        missing = [NEEDS.get(n, (n, n)) for n in sorted(needs - {"gpu"})
                   if context.get(NEEDS.get(n, (n, n))[0]) is None]
        if missing:
            raise DwrpruneError(
                f"the {label} {self.kind} needs {' and '.join(w for _, w in missing)} "
                f"(pass {', '.join(f'{k}=...' for k, _ in missing)}, or --data on the "
                "command line)")

    def create(self, entry: str | Any, **context) -> Any:
        """Build ``entry`` (a name; an object is returned as it is) from ``context``."""
        if not isinstance(entry, str):
            return entry
        obj = self.get(entry)
        self.check_needs(entry, context)
        build: Callable | None = getattr(obj, "from_context", None)
        return build(**context) if build is not None else obj()
