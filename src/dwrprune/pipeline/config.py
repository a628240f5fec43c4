"""One typed configuration for a pipeline run, validated completely before any work starts.

Every field is at once a Python keyword, a CLI option (``--final-epochs``) and a YAML key
(``final_epochs``).  Each field declares in its metadata which part of the run it belongs to
(``section``) and what it binds (``binds``): ``"collect"`` fields fix the sample collection
(a run folder refuses to resume its collection with other values), ``"final"`` fields fix the
final fine-tune (other values start the final stage afresh, keeping the collection).
Fields that bind nothing (executor, plan-only options) may change between resumes.

Values are resolved as defaults < preset < YAML file < command line / keywords, and
:meth:`PipelineConfig.from_dict` checks every value's type and range and every name
(criteria, predictor families, executor) before a single sample is computed.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from ..errors import DwrpruneError
from ..io.files import read_yaml, short
from ..registry import Registry


def _f(default, section: str, binds: str | None = None, help: str = ""):
    meta = {"section": section, "binds": binds, "help": help}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: [list(x) if isinstance(x, list) else x
                                              for x in default], metadata=meta)
    return field(default=default, metadata=meta)


C, F = "collect", "final"


@dataclass
class PipelineConfig:
    """Everything a run needs (see the module docstring for sections and binding)."""

    # data
    data: str = _f("fashion-mnist", "data", C, "dataset name")
    data_dir: str | None = _f(None, "data", C, "dataset folder")
    val_fraction: float = _f(0.1, "data", C, "share of training images held out")
    batch_size: int = _f(128, "data", C, "batch size of every loader")
    workers: int = _f(0, "data", None, "DataLoader worker processes")
    input_size: int | None = _f(None, "data", C, "image folders: the model's input side "
                                "(default: the images' own)")
    resize: str = _f("resize", "data", C, "image folders: how evaluation images reach the "
                     "model's side: resize (plain) | center-crop (ImageNet-style)")
    train_augment: str = _f("mild", "data", C, "image folders: mild (crop with padding, flip) "
                            "| imagenet (RandomResizedCrop, flip)")
    mean: list[float] | None = _f(None, "data", C, "per-channel mean (default: the dataset's; "
                                  "image folders: computed from the training images)")
    std: list[float] | None = _f(None, "data", C, "per-channel std (as mean)")
    expect_accuracy: float | None = _f(None, "data", None, "the original's validation accuracy "
                                       "in percent, as you measure it: stop when dwrprune's "
                                       "differs by more than a point")
    # what may be pruned and how
    transitions: bool = _f(False, "prune", C, "also remove stage-transition blocks")
    ignore: list[str] = _f([], "prune", C, "layers left exactly as they are, by module name "
                           "(e.g. fc,layer4.2): their channels stay whole and blocks holding "
                           "them are never removed")
    blocks: list[str] | None = _f(None, "prune", C, "the removable blocks, by module name "
                                  "(default: detected)")
    depth_criterion: str = _f("loss", "prune", C, "block ranking: loss | weight_norm")
    channel_criterion: str = _f("l1", "prune", C, "l1 | l2 | bn_scale | taylor | random | "
                                "autobot")
    round_to: int | None = _f(None, "prune", C, "round kept channel counts to a multiple")
    width_allocation: str = _f("uniform", "prune", C, "uniform | autobot")
    autobot_steps: int = _f(200, "prune", C, "AutoBot mask-training batches")
    # sample collection
    depth_steps: list[float] = _f([0.86, 0.71, 0.57, 0.43, 0.29], "collect", C)
    width_steps: list[float] = _f([0.875, 0.75, 0.625, 0.5, 0.375], "collect", C)
    resolution_steps: list[float] = _f([0.86, 0.71, 0.57, 0.43], "collect", C)
    mixed_points: list[list[float]] = _f([[0.71, 0.75, 0.86], [0.57, 0.875, 0.71],
                                          [0.86, 0.625, 0.71]], "collect", C)
    holdout_points: list[list[float]] = _f([[0.57, 0.75, 0.86], [0.86, 0.75, 0.71],
                                            [0.71, 0.625, 1.0], [0.43, 0.875, 0.86],
                                            [1.0, 0.625, 0.86]], "collect", C)
    finetune_steps: int = _f(200, "collect", C, "fine-tune batches per chain sample")
    mixed_finetune_steps: int | None = _f(None, "collect", C, "default: 2 x finetune_steps")
    finetune_lr: float = _f(0.01, "collect", C)
    train_subset: int | None = _f(None, "collect", C)
    val_subset: int | None = _f(None, "collect", C)
    bn_samples: bool = _f(False, "collect", C, "also record BN-recalibrated-only samples")
    recal_batches: int = _f(20, "collect", C, "BatchNorm re-calibration batches")
    seed: int = _f(0, "collect", C)
    precision: str = _f("auto", "collect", C, "training precision: auto | fp32 | bf16 | "
                        "fp16 (autocast; fp16 on a GPU only; auto: bf16 where the training "
                        "device computes it natively, else fp32, recorded as chosen); "
                        "evaluation is fp32")
    channels_last: bool = _f(False, "collect", C, "train in channels_last memory layout")
    # predictor
    families: list[str] = _f(["pchip"], "fit", None, "pchip (monotone interpolation of the "
                             "one-axis samples; ranks the iso-cost oracle best) or polynomials "
                             "chosen by leave-one-out error: separable, cp, full")
    max_degree: int = _f(3, "fit")
    max_rank: int = _f(2, "fit")
    monotone: str = _f("prefer", "fit", None, "prefer | require | ignore")
    fit_bn_samples: bool = _f(False, "fit")
    fit_mixed: bool = _f(False, "fit", None, "fit the predictor on the mixed points too "
                         "(default off: on the one-axis chains only, the mixed points held "
                         "out; the iso-cost oracle shows the chains-only fit choosing better)")
    # solver
    budget: float = _f(0.5, "plan", F, "fraction of the original MACs")
    lower_bounds: list[float] | None = _f(None, "plan", F, "[d, w, r] (default: sampled range)")
    latency_budget: float | None = _f(None, "plan", F, "budget as a fraction of the original "
                                      "model's measured latency (instead of MACs)")
    latency_ms: float | None = _f(None, "plan", F, "budget as a latency in ms on the target")
    latency_batch: int = _f(1, "plan", F, "batch size latency is measured at")
    threads: int = _f(1, "plan", F, "CPU threads latency is measured with")
    device: str = _f("cpu", "plan", F, "where latency is measured: cpu | cuda")
    runtime: str = _f("torch", "plan", F, "what latency is measured in: torch (PyTorch "
                      "eager) | onnxruntime (the exported model, CPU) | cuda-graph (CUDA "
                      "graphs replayed on the GPU)")
    latency_round_to: int | None = _f(8, "plan", None, "latency budgets: also weigh each "
                                      "width with its channel counts rounded down to this "
                                      "multiple (ONNX Runtime's and GPUs' kernels can run 8 "
                                      "channels faster than 11), predicted as the unrounded "
                                      "width of equal MACs, taken where predicted more "
                                      "accurate; none: never (ignored with round_to)")
    max_drop: float | None = _f(None, "plan", F, "instead of a budget: the fastest model whose "
                                "predicted validation accuracy stays within this many points "
                                "of the original's (hedged by the predictor's uncertainty; "
                                "the collection adds one sample, the original fine-tuned as "
                                "briefly as the others, which the drop is counted from)")
    minimize: str = _f("latency", "plan", F, "what --max-drop minimises: latency (on the "
                       "target: --runtime, --device, --latency-batch, --threads) | macs")
    min_gain_sigmas: float = _f(1.0, "plan", F, "leave the best one-axis point only when the "
                                "predicted gain exceeds this many standard deviations (0: the "
                                "predictor's optimum always, as the paper does)")
    # final fine-tune
    final_epochs: int = _f(10, "final", F)
    final_lr: float = _f(0.02, "final", F)
    final_subset: int | None = _f(None, "final", F)
    distill: float = _f(0.0, "final", F, "weight of distillation from the original, in [0, 1]")
    label_smoothing: float = _f(0.0, "final", F, "in [0, 1)")
    # where sample jobs run (never changes results; see dwrprune.executors)
    executor: str = _f("local", "executor", None, "local | ray")
    jobs: int = _f(1, "executor", None, "sample jobs side by side on this machine, each in a "
                   "worker process (several small fine-tunes share one GPU)")
    ray_address: str | None = _f(None, "executor")
    job_cpus: float = _f(1.0, "executor")
    job_gpus: float = _f(0.0, "executor")
    retries: int = _f(2, "executor")

    # ------------------------------------------------------------------ binding
    @classmethod
    def bound_fields(cls, binds: str) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.metadata.get("binds") == binds)

    def collect_config(self) -> dict:
        return {k: getattr(self, k) for k in self.bound_fields(C)}

    def final_config(self) -> dict:
        return {k: getattr(self, k) for k in self.bound_fields(F)}

    @classmethod
    def collect_defaults(cls) -> dict:
        return PipelineConfig().collect_config()

    @property
    def latency_target(self):
        """The :class:`~dwrprune.cost.latency.LatencyTarget` of a latency budget, else None."""
        if self.latency_budget is None and self.latency_ms is None and not (
                self.max_drop is not None and self.minimize == "latency"):
            return None
        return self.target()

    def target(self):
        """The latency target these options name, budget or not (``cuda-graph`` runs on
        the GPU whatever ``device`` says)."""
        from ..cost.latency import LatencyTarget

        device = "cuda" if self.runtime == "cuda-graph" else self.device
        return LatencyTarget(device, self.latency_batch, self.threads, self.runtime)

    def as_dict(self) -> dict:
        return asdict(self)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, values: dict, where: str = "pipeline options") -> PipelineConfig:
        """A validated config from plain values (YAML, CLI, keywords): unknown keys, wrong
        types and out-of-range values are each one clear error naming the key."""
        if not isinstance(values, dict):
            raise DwrpruneError(f"{where} must be a mapping of option: value, got "
                                f"{type(values).__name__}")
        types = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(values) - set(types))
        if unknown:
            raise DwrpruneError(f"unknown {where} {unknown}; known: {sorted(types)}")
        clean = {k: coerce(k, v, types[k]) for k, v in values.items()}
        if clean.get("precision", cls.precision) == "auto":  # recorded as what it means here
            from ..training.engine import compute_device, resolve_precision

            clean["precision"] = resolve_precision("auto", compute_device())
        cfg = cls(**clean)
        cfg.validate()
        return cfg

    def replace(self, **changes) -> PipelineConfig:
        return PipelineConfig.from_dict({**self.as_dict(), **changes})

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        from .validate import validate_config

        validate_config(self)


def coerce(name: str, value, annotation: str):
    """``value`` checked against a field's annotation (ints are accepted as floats; None only
    where the annotation allows it)."""
    optional = annotation.endswith("| None")
    base = annotation.removesuffix(" | None")
    if value is None:
        if optional:
            return None
        raise DwrpruneError(f"option {name} needs a value ({base}), got none")

    def bad(what: str):
        return DwrpruneError(f"option {name} must be {what}, got {short(value)}")

    def number(v, kind):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise bad("a number" if kind is float else "a whole number")
        if kind is int:
            if isinstance(v, float) and not v.is_integer():
                raise bad("a whole number")
            return int(v)
        return float(v)

    if base == "str":
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if base == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if base in ("int", "float"):
        return number(value, int if base == "int" else float)
    if base == "list[float]":
        if not isinstance(value, (list, tuple)):
            raise bad("a list of numbers")
        return [number(v, float) for v in value]
    if base == "list[list[float]]":
        if not isinstance(value, (list, tuple)) or not all(isinstance(p, (list, tuple))
                                                           for p in value):
            raise bad("a list of [d, w, r] points")
        return [[number(v, float) for v in p] for p in value]
    if base == "list[str]":
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise bad("a list of names")
        return list(value)
    raise AssertionError(f"no rule for annotation {annotation!r}")  # a new field type


def field_defaults() -> dict:
    return {f.name: (f.default if f.default is not MISSING else f.default_factory())
            for f in fields(PipelineConfig)}



PRESETS: Registry = Registry("preset")
# Whole pipeline on the bundled ResNet-20 in a few minutes on 2 cores.
PRESETS.register(name="quick")({"depth_criterion": "weight_norm", "depth_steps": [0.71, 0.43],
              "width_steps": [0.75, 0.5], "resolution_steps": [0.79, 0.57],
              "mixed_points": [[0.71, 0.75, 0.79]],
              "holdout_points": [[0.57, 0.75, 0.86], [0.86, 0.75, 0.71], [0.71, 0.625, 1.0],
                                 [0.43, 0.875, 0.86], [1.0, 0.625, 0.86]],
              "finetune_steps": 30, "mixed_finetune_steps": 30, "train_subset": 4000,
              "val_subset": 1000, "final_epochs": 1, "final_subset": 10000,
              "max_degree": 2, "recal_batches": 10})
# The settings of the README's full run (about 40 minutes on 2 cores for ResNet-20).
PRESETS.register(name="full")({"finetune_steps": 150, "val_subset": None, "final_epochs": 8,
                               "final_lr": 0.02, "distill": 0.5})


def read_options_file(path: str | Path) -> dict:
    """A YAML file of options (keys with dashes or underscores) as a plain mapping."""
    values = read_yaml(path, "config")
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise DwrpruneError(f"config {path} must be a mapping of option: value, got "
                            f"{type(values).__name__}")
    return {str(k).replace("-", "_"): v for k, v in values.items()}


class _ExplicitNone:
    """An override that sets a field to None (``--round-to none``), where None itself means
    "not given" (see :func:`given`)."""

    def __repr__(self) -> str:
        return "NONE"


NONE = _ExplicitNone()


def given(overrides: dict) -> dict:
    """The overrides that were given: None means "not given", :data:`NONE` "set to None"."""
    return {k: None if v is NONE else v for k, v in overrides.items() if v is not None}


def resolve_config(preset: str | None = None, config_file: str | Path | None = None,
                   **overrides) -> PipelineConfig:
    """Defaults < preset < YAML file < overrides (None means "not given"; :data:`NONE`
    sets a field to None)."""
    values: dict = {}
    if preset:
        values.update(PRESETS.get(preset))
    if config_file is not None:
        values.update(read_options_file(config_file))
    given_ = given(overrides)
    values.update(given_)
    lat = [k for k in ("latency_budget", "latency_ms") if values.get(k) is not None]
    if lat and "budget" in given_:
        raise DwrpruneError(f"give one budget: budget (MACs) or {lat[0]} (latency), not both")
    if values.get("max_drop") is not None and (lat or "budget" in given_):
        raise DwrpruneError(f"max_drop chooses the fastest model within an accuracy loss; it "
                            f"cannot go with a budget ({(lat or ['budget'])[0]}): give one")
    return PipelineConfig.from_dict(values)
