"""The one training / fine-tuning / evaluation loop.

Pretraining, every fine-tune of sample collection, the final fine-tune and the benchmarks all
call :func:`train` and :func:`evaluate` from here.  Defaults: SGD with Nesterov momentum,
cosine learning-rate schedule stepped per batch, optional label smoothing, and an optional
teacher for knowledge distillation (Hinton et al. 2015: KL between temperature-softened
distributions, scaled by T^2).

Determinism and resumption: at the start of epoch ``e`` the global torch RNG and the loader's
epoch (its order and augmentation) are both seeded from ``seed`` and ``e``, so a run resumed
from the checkpoint of epoch ``e-1`` sees exactly the batches an uninterrupted run would.

Speed: batches of dwrprune's tensor datasets are made on the compute device
(:mod:`~dwrprune.training.device_data`); other loaders' batches are copied without blocking.
A training step never waits for the device: loss and accuracy are summed there and read at
the end of an epoch, when the progress bar is redrawn (at most every ``REFRESH_S`` seconds) and
every ``CHECK_EVERY`` steps, which is also when a diverged loss is caught.  ``precision``
(``bf16``, ``fp16``: autocast, with BatchNorm and the weights in fp32) and ``channels_last``
are options of :class:`TrainConfig`; evaluation is always fp32.  The default precision,
``auto``, is bf16 where the device computes it natively (:func:`resolve_precision`): on the
benchmark recipe it fine-tunes 1.7x faster on such a CPU with the same accuracy
(``benchmarks/precision_check.py``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..cost.timing import visiting
from ..errors import DwrpruneError, quote_error
from ..io.files import load_torch, model_payload, save_torch
from ..io.settings import check_same_settings
from . import distributed


@dataclass
class TrainConfig:
    """How to train.  ``steps`` (if set) overrides ``epochs``: fine-tunes are often counted
    in batches rather than passes over the data."""

    epochs: int = 15
    steps: int | None = None
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    label_smoothing: float = 0.0
    kd_alpha: float = 0.0  # weight of the distillation term (needs a teacher)
    kd_temperature: float = 4.0
    seed: int = 0
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (autocast; fp16 on a GPU only)
    channels_last: bool = False

    def validate(self) -> None:
        if self.steps is None and self.epochs < 1:
            raise DwrpruneError(f"epochs must be >= 1, got {self.epochs}")
        if self.steps is not None and self.steps < 1:
            raise DwrpruneError(f"steps must be >= 1, got {self.steps}")
        if self.lr <= 0:
            raise DwrpruneError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.kd_alpha <= 1.0:
            raise DwrpruneError(f"kd_alpha must be in [0, 1], got {self.kd_alpha}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise DwrpruneError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        check_precision(self.precision)


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
CHECK_EVERY = 50  # steps between reads of the running loss (divergence check)
REFRESH_S = 1.0  # seconds between progress-bar redraws (each one reads the sums)


AUTO = "auto"  # bf16 where the device computes it natively, else fp32


def native_bf16(device: str | torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware: a GPU with bf16 (Ampere and later), an
    x86 CPU with AVX512-BF16 or AMX.  (Elsewhere bf16 autocast runs, emulated and slower.)"""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # older torch: no emulation to exclude
            return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    probes = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported",
                                                     "_is_amx_tile_supported")]
    return any(bool(p()) for p in probes if p is not None)


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """The precision ``precision`` means on ``device``: ``auto`` is bf16 where the device
    computes it natively (:func:`native_bf16`), else fp32; any other value is itself."""
    if precision != AUTO:
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def check_precision(precision: str, device: str | torch.device | None = None) -> None:
    """``precision`` is known and (with ``device``) runs there, or one error naming what does:
    fp16 needs a GPU, bf16 a GPU that has it (or the CPU)."""
    if precision not in PRECISIONS and precision != AUTO:
        raise DwrpruneError(f"precision {precision!r} is not known; choose "
                            f"{' | '.join([AUTO, *PRECISIONS])}")
    if device is None or precision == AUTO:
        return
    device = torch.device(device)
    if precision == "fp16" and device.type != "cuda":
        raise DwrpruneError("precision fp16 needs a GPU to train on (training runs on the "
                            f"{device.type}); on the CPU use fp32 or bf16")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DwrpruneError(f"this GPU ({torch.cuda.get_device_name(device)}) has no bf16; "
                            "use fp16 or fp32")


def on_device(loader, device: torch.device):
    """``loader`` yielding batches on ``device``: a :class:`TensorLoader` makes them there,
    any other loader is copied per batch (without blocking where the memory is pinned)."""
    return loader.on(device) if hasattr(loader, "on") else loader


def _to(t: Tensor, device: torch.device, channels_last: bool = False) -> Tensor:
    t = t.to(device, non_blocking=True)
    return t.contiguous(memory_format=torch.channels_last) if channels_last and t.dim() == 4 \
        else t


@dataclass
class PairedResult:
    """Two models on the same images: how many images each classified right that the other
    got wrong (what the noise of their accuracy difference depends on)."""

    count: int
    only_a: int
    only_b: int

    def difference_sd(self) -> float:
        """Standard deviation of accuracy(a) - accuracy(b) on these images, paired: far
        below two independent accuracies' noise when the models mostly agree."""
        n, k, diff = self.count, self.only_a + self.only_b, self.only_a - self.only_b
        return math.sqrt(max(k - diff * diff / n, 0.0)) / n


@dataclass
class EvalResult:
    loss: float
    accuracy: float  # fraction in [0, 1]
    count: int
    paired: PairedResult | None = None  # with ``against``: a = that model, b = this one


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def compute_device(device: str | torch.device | None = None) -> torch.device:
    """Where training and evaluation run: ``device`` if given, else this process's GPU when
    there is one (under torchrun, the one LOCAL_RANK names; on Ray, the one it assigned),
    else the CPU."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", distributed.local_rank())
    return torch.device("cpu")


def evaluate(model: nn.Module, loader: DataLoader, progress: bool = False,
             desc: str = "eval", max_batches: int | None = None,
             device: str | torch.device | None = None,
             against: nn.Module | None = None) -> EvalResult:
    """Mean cross-entropy and top-1 accuracy over ``loader`` in eval mode (under torchrun,
    each rank evaluates every N-th sample and the counts are summed); on ``device``
    (default: :func:`compute_device`), the model put back where it was afterwards.
    ``against``: another model run on the same batches in the same pass; ``paired`` then
    counts the images each got right and the other wrong (a = ``against``, b = ``model``)."""
    with visiting(compute_device(device), model, against):
        return _evaluate(model, loader, progress, desc, max_batches, against)


@torch.no_grad()
def _evaluate(model: nn.Module, loader: DataLoader, progress: bool, desc: str,
              max_batches: int | None, against: nn.Module | None = None) -> EvalResult:
    modes = model.training, against is not None and against.training
    model.eval()
    if against is not None:
        against.eval()
    device = _device_of(model)
    loader = on_device(distributed.shard_eval_loader(loader), device)
    # loss, correct, only against right, only model right: one read
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    n = 0
    it = tqdm(loader, desc=desc, leave=False, disable=not progress)
    for i, (x, y) in enumerate(it):
        if max_batches is not None and i >= max_batches:
            break
        x, y = _to(x, device), _to(y, device)
        out = model(x)
        right = out.argmax(1) == y
        sums[0] += F.cross_entropy(out, y, reduction="sum")
        sums[1] += right.sum()
        if against is not None:
            other = against(x).argmax(1) == y
            sums[2] += (other & ~right).sum()
            sums[3] += (right & ~other).sum()
        n += len(y)
    model.train(modes[0])
    if against is not None:
        against.train(modes[1])
    loss_sum, correct, only_a, only_b, n = distributed.sum_across(*sums.tolist(), n)
    n, correct = int(n), int(correct)
    if n == 0:
        raise DwrpruneError("evaluation loader yielded no samples")
    paired = PairedResult(n, int(only_a), int(only_b)) if against is not None else None
    return EvalResult(loss_sum / n, correct / n, n, paired)


def recalibrate_batchnorm(model: nn.Module, loader: DataLoader, num_batches: int = 50,
                          progress: bool = False,
                          device: str | torch.device | None = None) -> nn.Module:
    """EagleEye's adaptive BatchNorm: re-estimate running statistics on training batches.

    Statistics are reset and accumulated as a cumulative average (momentum=None) over
    ``num_batches`` batches in train mode with gradients off; weights are unchanged.  Runs
    on ``device`` (default: :func:`compute_device`); the model is put back where it was.
    """
    with visiting(compute_device(device), model):
        return _recalibrate(model, loader, num_batches, progress)


@torch.no_grad()
def _recalibrate(model: nn.Module, loader, num_batches: int, progress: bool) -> nn.Module:
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    device = _device_of(model)
    seen = 0
    for x, _ in tqdm(on_device(loader, device), desc="bn-recal", leave=False,
                     disable=not progress, total=min(num_batches, len(loader))):
        if seen >= num_batches:
            break
        model(_to(x, device))
        seen += 1
    for m, mom in saved:
        m.momentum = mom
    model.train(was_training)
    return model


def distillation_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    t = temperature
    return F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1),
                    reduction="batchmean", log_target=True) * t * t


def _lr_lambda(total: int, warmup: int, min_ratio: float) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        p = (step - warmup) / max(1, total - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))

    return f


def train(
    model: nn.Module,
    train_loader: DataLoader,
    config: TrainConfig | None = None,
    *,
    val_loader: DataLoader | None = None,
    teacher: nn.Module | None = None,
    checkpoint_dir: str | Path | None = None,
    spec: dict | None = None,
    progress: bool = True,
    log: bool = True,
    desc: str = "train",
    device: str | torch.device | None = None,
    checkpoint_every: int | None = 200,
) -> TrainResult:
    """Train ``model`` in place; returns per-epoch history.

    With ``checkpoint_dir``, writes ``last.pt`` (model + optimizer + schedule + history,
    atomically) after every epoch, and resumes from it if it is already there.  ``spec`` is
    stored in the checkpoint so that ``last.pt`` is also a loadable model checkpoint.  It is
    also written every ``checkpoint_every`` steps inside an epoch, so a kill loses minutes
    (a resumed epoch skips the batches it already trained on, in the same order).
    ``progress`` shows tqdm bars; ``log`` prints one summary line per epoch.  Training runs
    on ``device`` (default: :func:`compute_device`); the model is put back where it was.

    Under ``torchrun`` (see :mod:`dwrprune.training.distributed`) the same call trains
    data-parallel:
    the loader's batch size is the global batch, and only rank 0 logs and writes.
    """
    with visiting(compute_device(device), model, teacher):
        return _train(model, train_loader, config, val_loader, teacher, checkpoint_dir, spec,
                      progress, log, desc, checkpoint_every)


def _train(model, train_loader, config, val_loader, teacher, checkpoint_dir, spec, progress,
           log, desc, checkpoint_every=None) -> TrainResult:
    config = config or TrainConfig()
    config.validate()
    if distributed.init():
        train_loader = distributed.shard_train_loader(train_loader)
        progress, log = progress and distributed.is_main(), log and distributed.is_main()
    net = distributed.wrap(model)  # the model itself when not distributed
    if config.kd_alpha > 0 and teacher is None:
        raise DwrpruneError("kd_alpha > 0 needs a teacher model for distillation")
    n_batches = len(train_loader)
    if n_batches == 0:
        raise DwrpruneError("training loader yields no batches (dataset smaller than batch?)")
    total = config.steps if config.steps is not None else config.epochs * n_batches
    n_epochs = math.ceil(total / n_batches)
    device = _device_of(model)
    config = replace(config, precision=resolve_precision(config.precision, device))
    check_precision(config.precision, device)
    train_loader = on_device(train_loader, device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    amp_dtype = PRECISIONS[config.precision]
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")

    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": config.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr, momentum=config.momentum, nesterov=config.nesterov and config.momentum > 0,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, _lr_lambda(total, config.warmup_steps, config.min_lr_ratio))
    result = TrainResult()
    start_epoch, step, partial = 0, 0, None
    ckpt_path = Path(checkpoint_dir) / "last.pt" if checkpoint_dir else None
    if ckpt_path is not None and ckpt_path.exists():
        state = load_torch(ckpt_path)
        check_same_settings(state.get("train_config", {}), asdict(config), str(ckpt_path),
                            "written", asdict(TrainConfig()), "use a new --out folder")
        try:
            model.load_state_dict(state["state_dict"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise DwrpruneError(f"{ckpt_path} does not belong to this model and training "
                                f"({quote_error(e)}); use a new --out folder") from None
        start_epoch, step = int(state["epoch"]) + 1, int(state["step"])
        partial = state.get("partial")  # a checkpoint written inside an epoch
        if partial is not None:
            start_epoch = int(partial["epoch"])
        result.history = list(state["history"])
        result.seconds = float(state.get("seconds", 0.0))
        if log:
            where = (f"step {step} (epoch {start_epoch + 1}, batch {partial['batch']})"
                     if partial else f"epoch {start_epoch}")
            tqdm.write(f"resumed from {ckpt_path} after {where}")

    def save(done_epoch: int, partial: dict | None = None) -> None:
        """last.pt after ``done_epoch`` (and ``partial``: how far into the next one)."""
        payload = model_payload(model, spec or {}, {"history": result.history})
        payload.update(optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                       epoch=done_epoch, step=step, history=result.history,
                       seconds=result.seconds, train_config=asdict(config))
        if partial is not None:
            payload["partial"] = partial
        save_torch(ckpt_path, payload)

    if teacher is not None:
        teacher.eval()
    for epoch in range(start_epoch, n_epochs):
        t0 = time.perf_counter()
        torch.manual_seed(config.seed * 100003 + epoch)
        if hasattr(train_loader, "set_epoch"):  # a TensorLoader: order and augmentation
            train_loader.set_epoch(config.seed * 100003 + epoch)
        elif hasattr(train_loader.sampler, "set_epoch"):
            train_loader.sampler.set_epoch(config.seed * 100003 + epoch)
        elif train_loader.generator is not None:  # a user's shuffled loader
            train_loader.generator.manual_seed(config.seed * 100003 + epoch)
        model.train()
        sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss, correct
        seen, skip = 0, 0
        if partial is not None and epoch == start_epoch:
            skip = int(partial["batch"])
            sums += torch.tensor([partial["loss_sum"], partial["correct"]],
                                 dtype=torch.float64).to(device)
            seen = partial["seen"]
        bar = tqdm(train_loader, desc=f"{desc} {epoch + 1}/{n_epochs}", leave=False,
                   disable=not progress, total=min(n_batches, total - step + skip))
        shown = time.perf_counter()

        def read(where: str) -> tuple[float, float]:
            """The running sums, read from the device; a non-finite loss stops the run."""
            loss_total, right = sums.tolist()
            if not math.isfinite(loss_total):
                raise DwrpruneError(f"training diverged (loss {loss_total / max(seen, 1)}) "
                                    f"{where}; lower the learning rate")
            return loss_total, right

        for batch, (x, y) in enumerate(bar):
            if batch < skip:  # trained before the resume: same batches, same order
                continue
            if step >= total:
                break
            x, y = _to(x, device, config.channels_last), _to(y, device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                out = net(x)
                loss = F.cross_entropy(out, y, label_smoothing=config.label_smoothing)
                if teacher is not None and config.kd_alpha > 0:
                    with torch.no_grad():
                        t_out = teacher(x)
                    loss = ((1 - config.kd_alpha) * loss + config.kd_alpha
                            * distillation_loss(out, t_out, config.kd_temperature))
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            step += 1
            sums[0] += loss.detach().float() * len(y)
            sums[1] += (out.argmax(1) == y).sum()
            seen += len(y)
            if step % CHECK_EVERY == 0:
                read(f"by step {step}")
            if progress and time.perf_counter() - shown > REFRESH_S:
                loss_total, right = read(f"by step {step}")
                bar.set_postfix(loss=f"{loss_total / seen:.3f}", acc=f"{right / seen:.3f}",
                                lr=f"{sched.get_last_lr()[0]:.3g}", refresh=False)
                shown = time.perf_counter()
            if (ckpt_path is not None and checkpoint_every and step % checkpoint_every == 0
                    and batch + 1 < n_batches and step < total and distributed.is_main()):
                loss_total, right = read(f"by step {step}")  # never save a diverged model
                save(epoch - 1, {"epoch": epoch, "batch": batch + 1, "loss_sum": loss_total,
                                 "correct": right, "seen": seen})
        loss_sum, correct = read(f"in epoch {epoch + 1} (by step {step})")
        loss_sum, correct, seen = distributed.sum_across(loss_sum, correct, seen)
        row = {"epoch": epoch + 1, "step": step, "train_loss": loss_sum / max(seen, 1),
               "train_acc": correct / max(seen, 1), "lr": sched.get_last_lr()[0]}
        if val_loader is not None:
            ev = evaluate(model, val_loader, progress=progress, desc="val")
            row.update(val_loss=ev.loss, val_acc=ev.accuracy)
        result.seconds += time.perf_counter() - t0
        row["seconds"] = result.seconds
        result.history.append(row)
        if log:
            msg = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in row.items())
            tqdm.write(f"[{desc}] {msg}")
        if ckpt_path is not None and distributed.is_main():
            save(epoch)
        distributed.barrier()  # no rank runs ahead of the checkpoint it could resume from
    result.steps = step
    return result
