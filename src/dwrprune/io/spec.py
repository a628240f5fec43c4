"""The model spec: what a checkpoint's architecture is, as data.

A spec says which registered constructor builds the model (``model``), what input it takes
(``input``), what pruning changed (``arch``: blocks removed, per-layer channel counts, the
(d, w, r) point) and how that was done (``provenance``: criteria, re-calibration, fine-tune).
It is stored as plain JSON inside every checkpoint and kept on a model as
``model.dwrprune_spec`` (a dict, so that a model pickles and travels without dwrprune
classes); :class:`ModelSpec` is the typed view with a schema check, and :func:`spec_of` the
one accessor.  Nothing in a spec is code: it is validated field by field before anything is
built from it (see also :func:`dwrprune.pruning.surgery.validate_arch` for the layer records).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..errors import DwrpruneError

_MODEL_KEYS = {"name": (str, type(None)), "num_classes": int, "in_channels": int}
_INPUT_KEYS = {"resolution": int, "dataset": (str, type(None)),
               "mean": (list, type(None)), "std": (list, type(None)),
               "resize": (str, type(None))}
RESIZE_METHODS = ("resize", "center-crop")
ARCH_KEYS = ("point", "base_resolution", "removable_blocks", "width", "depth_criterion",
             "removed_blocks", "layers", "requested",
             "method", "budget", "kept_per_group")  # the last three: AutoBot's own records
MAX_SIDE = 8192  # no input side beyond this is a real image model's
MAX_COUNT = 1_000_000


def _check_keys(where: str, d: Any, schema: dict, required: tuple[str, ...]) -> None:
    if not isinstance(d, dict):
        raise DwrpruneError(f"spec field {where!r} must be a mapping, got {type(d).__name__}")
    unknown = sorted(set(d) - set(schema))
    if unknown:
        raise DwrpruneError(f"spec field {where!r} has unknown keys {unknown}; known: "
                            f"{sorted(schema)}")
    for k in required:
        if k not in d:
            raise DwrpruneError(f"spec field {where!r} lacks {k!r}")
    for k, types in schema.items():
        if k in d and (not isinstance(d[k], types) or isinstance(d[k], bool)):
            want = types.__name__ if isinstance(types, type) else " or ".join(
                t.__name__ for t in types)
            raise DwrpruneError(f"spec field {where}.{k} must be {want}, got "
                                f"{type(d[k]).__name__}")


def _check_count(where: str, v: int, lo: int = 1, hi: int = MAX_COUNT) -> None:
    if not lo <= v <= hi:
        raise DwrpruneError(f"spec field {where} = {v} is outside [{lo}, {hi}]")


@dataclass
class ModelSpec:
    """Typed view of a spec dict.  ``ModelSpec.from_dict(d).to_dict() == d`` for every valid
    spec; :meth:`from_dict` refuses anything else with one clear :class:`DwrpruneError`."""

    name: str | None
    num_classes: int
    in_channels: int
    resolution: int
    dataset: str | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    resize: str | None = None
    arch: dict | None = None
    provenance: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ conversions
    @classmethod
    def from_dict(cls, d: Any) -> ModelSpec:
        _check_keys("spec", d, {"model": dict, "input": dict, "arch": (dict, type(None)),
                                "provenance": dict}, ("model", "input"))
        m, i = d["model"], d["input"]
        _check_keys("model", m, _MODEL_KEYS, ("name", "num_classes", "in_channels"))
        _check_keys("input", i, _INPUT_KEYS, ("resolution",))
        _check_count("model.num_classes", m["num_classes"], 0)  # 0: a features-only model
        _check_count("model.in_channels", m["in_channels"], 1, 4096)
        _check_count("input.resolution", i["resolution"], 1, MAX_SIDE)
        for k in ("mean", "std"):
            v = i.get(k)
            if v is not None and (len(v) != m["in_channels"] or not all(
                    isinstance(x, (int, float)) and math.isfinite(x) for x in v)):
                raise DwrpruneError(f"spec field input.{k} must be {m['in_channels']} finite "
                                    f"numbers, got {v!r}")
        if "std" in i and i["std"] is not None and any(x <= 0 for x in i["std"]):
            raise DwrpruneError(f"spec field input.std must be positive, got {i['std']}")
        if i.get("resize") not in (None, *RESIZE_METHODS):
            raise DwrpruneError(f"spec field input.resize must be one of {RESIZE_METHODS}, got "
                                f"{str(i['resize'])[:40]!r}")
        arch = d.get("arch")
        if arch is not None:
            _check_keys("arch", arch, dict.fromkeys(ARCH_KEYS, object), ())
            if not isinstance(arch.get("removed_blocks", []), list) or not isinstance(
                    arch.get("layers", {}), dict):
                raise DwrpruneError("spec field arch.removed_blocks must be a list and "
                                    "arch.layers a mapping")
            point = arch.get("point")
            if point is not None and (not isinstance(point, dict) or set(point) != set("dwr")
                                      or not all(v is None or (  # None: AutoBot's own widths
                                          isinstance(v, (int, float)) and not isinstance(v, bool)
                                          and 0 < v <= 1) for v in point.values())):
                raise DwrpruneError("spec field arch.point must map d, w and r to fractions in "
                                    f"(0, 1], got {str(point)[:60]}")
        return cls(m["name"], m["num_classes"], m["in_channels"], i["resolution"],
                   i.get("dataset"), i.get("mean"), i.get("std"), i.get("resize"),
                   copy.deepcopy(arch), copy.deepcopy(d.get("provenance") or {}))

    def to_dict(self) -> dict:
        d = {"model": {"name": self.name, "num_classes": self.num_classes,
                       "in_channels": self.in_channels},
             "input": {"resolution": self.resolution, "dataset": self.dataset,
                       "mean": self.mean, "std": self.std},
             "arch": copy.deepcopy(self.arch)}
        if self.resize is not None:  # older specs have no resize record: they round-trip
            d["input"]["resize"] = self.resize
        if self.provenance:
            d["provenance"] = copy.deepcopy(self.provenance)
        return d

    @property
    def contract(self) -> dict:
        """How to feed the model: input side, channels, resize method, mean and std."""
        return {"input_size": self.resolution, "in_channels": self.in_channels,
                "resize": self.resize or "resize", "mean": self.mean, "std": self.std,
                "dataset": self.dataset}

    def contract_line(self) -> str:
        """The deployment contract in one line."""
        def fmt(v):
            return "unknown" if v is None else "(" + ", ".join(f"{x:.4g}" for x in v) + ")"
        how = "resize" if (self.resize or "resize") == "resize" else \
            "resize to 256/224 of it, then center-crop"
        return (f"input {self.in_channels}x{self.resolution}x{self.resolution} ({how}), "
                f"scaled to [0, 1], mean {fmt(self.mean)}, std {fmt(self.std)}")

    # ------------------------------------------------------------------ questions
    @property
    def pruned(self) -> bool:
        return bool(self.arch)

    @property
    def point(self) -> dict[str, float]:
        """(d, w, r) relative to the original model (all 1 for an unpruned one)."""
        return dict((self.arch or {}).get("point") or {"d": 1.0, "w": 1.0, "r": 1.0})

    @property
    def removed_blocks(self) -> list[str]:
        return [b["name"] for b in (self.arch or {}).get("removed_blocks", [])]


def make_spec(name: str | None, num_classes: int, in_channels: int, resolution: int,
              dataset: str | None = None, mean=None, std=None,
              arch: dict | None = None, resize: str | None = None) -> dict:
    """A spec dict for an unpruned model (what ``model.dwrprune_spec`` holds)."""
    return ModelSpec(name, int(num_classes), int(in_channels), int(resolution), dataset,
                     list(mean) if mean is not None else None,
                     list(std) if std is not None else None, resize, arch).to_dict()


def spec_of(model: nn.Module, required: bool = True) -> ModelSpec | None:
    """The typed spec of ``model`` (its ``dwrprune_spec``); without one, an error naming the
    two ways to give one (or None when not ``required``)."""
    d = getattr(model, "dwrprune_spec", None)
    if d is None:
        if not required:
            return None
        raise DwrpruneError(
            f"{type(model).__name__} has no dwrprune spec: load it with dwrprune.load, pass "
            "example_inputs= (or resolution=), or set model.dwrprune_spec = "
            "dwrprune.make_spec(name, num_classes, in_channels, resolution)")
    return ModelSpec.from_dict(d)


def set_spec(model: nn.Module, spec: ModelSpec | dict) -> nn.Module:
    """Attach ``spec`` (validated) to ``model``; returns the model."""
    s = spec if isinstance(spec, ModelSpec) else ModelSpec.from_dict(spec)
    model.dwrprune_spec = s.to_dict()
    return model
