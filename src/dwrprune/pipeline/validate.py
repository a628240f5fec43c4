"""Range and name checks for :class:`~dwrprune.pipeline.config.PipelineConfig`: everything a
run would otherwise discover only after a long collection (a misspelt criterion, a
distillation weight of 5, zero final epochs) is refused here, before any work starts."""

from __future__ import annotations

from ..cost.timing import MAX_THREADS, check_device
from ..errors import DwrpruneError
from ..pruning.criteria import CHANNEL_CRITERIA, DEPTH_CRITERIA
from ..pruning.shrink import WIDTH_ALLOCATIONS
from ..search.predictor import FAMILIES
from .executors import EXECUTORS, check_jobs

MONOTONE = ("prefer", "require", "ignore")


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise DwrpruneError(message)


def _one_of(name: str, value: str, allowed) -> None:
    _need(value in allowed, f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def _fractions(name: str, vals, closed_low: bool = False) -> None:
    _need(all((0.0 <= v if closed_low else 0.0 < v) and v <= 1.0 for v in vals),
          f"{name} must be fractions in {'[0' if closed_low else '(0'}, 1], got {vals}")


def validate_config(cfg) -> None:
    """Every value of ``cfg`` in range and every name known, or one clear error."""
    # names
    _one_of("depth_criterion", cfg.depth_criterion, DEPTH_CRITERIA)
    _one_of("channel_criterion", cfg.channel_criterion, CHANNEL_CRITERIA)
    _one_of("width_allocation", cfg.width_allocation, WIDTH_ALLOCATIONS)
    _one_of("monotone", cfg.monotone, MONOTONE)
    _one_of("executor", cfg.executor, EXECUTORS)
    _need(bool(cfg.families), "families must name at least one predictor family")
    for f in cfg.families:
        _one_of("families", f, FAMILIES)
    _need(bool(cfg.data), "data must name a dataset")
    _one_of("resize", cfg.resize, ("resize", "center-crop"))
    _one_of("train_augment", cfg.train_augment, ("mild", "imagenet"))
    _need(cfg.input_size is None or 1 <= cfg.input_size <= 8192,
          f"input_size must be in [1, 8192] pixels, got {cfg.input_size}")
    for name in ("mean", "std"):
        v = getattr(cfg, name)
        _need(v is None or (len(v) >= 1 and all(x == x and abs(x) != float("inf") for x in v)),
              f"{name} must be one finite number per channel, got {v}")
    _need(cfg.std is None or min(cfg.std) > 0, f"std must be above 0, got {cfg.std}")
    _need(cfg.expect_accuracy is None or 0.0 <= cfg.expect_accuracy <= 100.0,
          f"expect_accuracy must be a percentage in [0, 100], got {cfg.expect_accuracy}")
    # data and training sizes
    _need(0.0 < cfg.val_fraction < 1.0, f"val_fraction must be in (0, 1), got "
          f"{cfg.val_fraction}")
    _need(cfg.batch_size >= 1, f"batch_size must be >= 1, got {cfg.batch_size}")
    _need(cfg.workers >= 0, f"workers must be >= 0, got {cfg.workers}")
    _need(cfg.round_to is None or cfg.round_to >= 1, f"round_to must be >= 1 (or none), got "
          f"{cfg.round_to}")
    _need(cfg.latency_round_to is None or cfg.latency_round_to >= 1, f"latency_round_to "
          f"must be >= 1 (or none), got {cfg.latency_round_to}")
    _need(cfg.autobot_steps >= 1, f"autobot_steps must be >= 1, got {cfg.autobot_steps}")
    _need(cfg.recal_batches >= 0, f"recal_batches must be >= 0, got {cfg.recal_batches}")
    for name in ("train_subset", "val_subset", "final_subset"):
        v = getattr(cfg, name)
        _need(v is None or v >= 1, f"{name} must be >= 1 (or none), got {v}")
    # collection
    for name in ("depth_steps", "width_steps", "resolution_steps"):
        vals = getattr(cfg, name)
        _fractions(name, vals)
        _need(list(vals) == sorted(vals, reverse=True),
              f"{name} must decrease (iterative pruning), got {vals}")
    for name in ("mixed_points", "holdout_points"):
        for p in getattr(cfg, name):
            _need(len(p) == 3 and all(0.0 < v <= 1.0 for v in p),
                  f"{name} entries must be [d, w, r] in (0, 1], got {p}")
    _need(cfg.finetune_steps >= 0, f"finetune_steps must be >= 0, got {cfg.finetune_steps}")
    _need(cfg.mixed_finetune_steps is None or cfg.mixed_finetune_steps >= 0,
          f"mixed_finetune_steps must be >= 0, got {cfg.mixed_finetune_steps}")
    _need(cfg.finetune_lr > 0, f"finetune_lr must be > 0, got {cfg.finetune_lr}")
    _need(cfg.seed >= 0, f"seed must be >= 0, got {cfg.seed}")
    # predictor and solver
    _need(1 <= cfg.max_degree <= 6, f"max_degree must be in [1, 6], got {cfg.max_degree}")
    _need(1 <= cfg.max_rank <= 6, f"max_rank must be in [1, 6], got {cfg.max_rank}")
    _need(0.0 < cfg.budget < 1.0, f"budget must be in (0, 1) (fraction of the original "
          f"MACs), got {cfg.budget}")
    _need(cfg.latency_budget is None or cfg.latency_ms is None,
          "give one latency budget: latency_budget (fraction) or latency_ms, not both")
    _need(cfg.latency_budget is None or 0.0 < cfg.latency_budget < 1.0,
          f"latency_budget must be in (0, 1) (fraction of the original latency), got "
          f"{cfg.latency_budget}")
    _need(cfg.latency_ms is None or cfg.latency_ms > 0, f"latency_ms must be > 0, got "
          f"{cfg.latency_ms}")
    _need(1 <= cfg.latency_batch <= 4096, f"latency_batch must be in [1, 4096], got "
          f"{cfg.latency_batch}")
    _need(1 <= cfg.threads <= MAX_THREADS, f"threads must be in [1, {MAX_THREADS}], got "
          f"{cfg.threads}")
    _one_of("device", cfg.device, ("cpu", "cuda"))
    from ..cost.runtimes import RUNTIMES

    _one_of("runtime", cfg.runtime, tuple(RUNTIMES.names()))
    _one_of("minimize", cfg.minimize, ("latency", "macs"))
    _need(cfg.max_drop is None or 0.0 <= cfg.max_drop <= 100.0,
          f"max_drop must be points of accuracy in [0, 100], got {cfg.max_drop}")
    _need(cfg.max_drop is None or (cfg.latency_budget is None and cfg.latency_ms is None),
          "max_drop cannot go with a latency budget: give one")
    check_device(cfg.device)  # cuda on a machine without one, whatever the budget
    if cfg.latency_target is not None:
        cfg.latency_target.check()  # cuda on a machine without one, say
    _need(cfg.min_gain_sigmas >= 0, f"min_gain_sigmas must be >= 0, got {cfg.min_gain_sigmas}")
    if cfg.lower_bounds is not None:
        _need(len(cfg.lower_bounds) == 3, f"lower_bounds must be [d, w, r], got "
              f"{cfg.lower_bounds}")
        _fractions("lower_bounds", cfg.lower_bounds, closed_low=True)
    # final fine-tune
    _need(cfg.final_epochs >= 1, f"final_epochs must be >= 1, got {cfg.final_epochs}")
    _need(cfg.final_lr > 0, f"final_lr must be > 0, got {cfg.final_lr}")
    _need(0.0 <= cfg.distill <= 1.0, f"distill must be in [0, 1] (weight of the "
          f"distillation loss), got {cfg.distill}")
    _need(0.0 <= cfg.label_smoothing < 1.0, f"label_smoothing must be in [0, 1), got "
          f"{cfg.label_smoothing}")
    # executor
    _need(cfg.job_cpus > 0, f"job_cpus must be > 0, got {cfg.job_cpus}")
    _need(cfg.job_gpus >= 0, f"job_gpus must be >= 0, got {cfg.job_gpus}")
    _need(cfg.retries >= 0, f"retries must be >= 0, got {cfg.retries}")
    _need(cfg.ray_address is None or cfg.executor == "ray",
          "--ray-address needs --executor ray")
    check_jobs(cfg.jobs)
    _need(cfg.jobs == 1 or cfg.executor == "local", "--jobs runs jobs side by side on this "
          "machine; with --executor ray, Ray places them (--job-cpus, --job-gpus)")
    # training engine: the precision must run where training does
    from ..training.engine import check_precision, compute_device

    check_precision(cfg.precision, compute_device())
