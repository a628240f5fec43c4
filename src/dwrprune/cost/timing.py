"""What a model costs, measured: latency, timed in turns beside the models it is compared with.

Latency is the median over repeats of a timed forward pass, after warm-up, with a fixed
number of threads, under ``torch.inference_mode``.
"""

from __future__ import annotations

import platform
import statistics
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..errors import DwrpruneError
from ..registry import Registry
from .counting import count_macs, count_params, first_conv_in_channels


@dataclass
class Latency:
    batch_size: int
    threads: int
    median_ms: float
    min_ms: float
    repeats: int
    p25_ms: float = 0.0  # the spread: quartiles of the repeats
    p75_ms: float = 0.0
    device: str = "cpu"


DEVICES: Registry = Registry("device")
MAX_THREADS = 256  # more would be a typo: torch would try to start them all
MAX_INPUT_ELEMENTS = 1 << 26  # one timed input batch: 256 MB of floats


@DEVICES.register
class CPU:
    """The CPU, with a fixed number of threads."""

    name = "cpu"
    needs: frozenset[str] = frozenset()


@DEVICES.register
class CUDA:
    """A CUDA GPU (timed with synchronisation, see :mod:`dwrprune.cost.runtimes`)."""

    name = "cuda"
    needs = frozenset({"gpu"})


def check_device(device: str) -> torch.device:
    """A registered device (``cpu``, or ``cuda`` where there is one), as a torch device."""
    DEVICES.check_needs(device, {})
    return torch.device(device)


def time_in_turns(calls: list[tuple[nn.Module, torch.Tensor]], threads: int = 1,
                  warmup: int = 5, repeats: int = 20, runtime: str = "torch"
                  ) -> list[list[float]]:
    """Wall-clock milliseconds of forward passes of each ``(module, input)`` (both on the
    same device) in ``runtime`` (:mod:`dwrprune.cost.runtimes`: PyTorch eager by default)
    with ``threads`` CPU threads: ``warmup`` untimed passes of each, then ``repeats`` rounds
    of one timed pass of each in turn, so that drift in the machine's speed (a shared host)
    slows every item alike instead of favouring whichever was timed in a quiet moment.  A
    CUDA device is timed with synchronisation."""
    from .runtimes import RUNTIMES

    rt = RUNTIMES.get(runtime)()
    with _timing_threads(threads, repeats):
        fns = [rt.prepare(module, x, threads) for module, x in calls]
        for fn in fns:
            for _ in range(warmup):
                fn()
        times: list[list[float]] = [[] for _ in fns]
        for _ in range(repeats):
            for out, fn in zip(times, fns):
                t0 = time.perf_counter()
                fn()
                out.append((time.perf_counter() - t0) * 1e3)
    return times


@contextmanager
def _timing_threads(threads: int, repeats: int):
    """Checked ``threads`` and ``repeats``; torch runs with ``threads`` CPU threads and
    under ``torch.inference_mode`` inside, and with its own thread count again after."""
    if threads < 1 or repeats < 1:
        raise DwrpruneError(f"threads and repeats must be >= 1, got {threads}, {repeats}")
    if threads > MAX_THREADS:
        raise DwrpruneError(f"threads must be at most {MAX_THREADS}, got {threads}")
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            yield
    finally:
        torch.set_num_threads(old_threads)


def time_layers(calls: list[tuple[nn.Module, torch.Tensor]], threads: int = 1,
                warmup: int = 3, repeats: int = 10, runtime: str = "torch"
                ) -> list[list[float]]:
    """Milliseconds per pass of each ``(layer, input)`` as a per-layer lookup table wants
    them: the runtime's own kernel times where it reports them (``time_kernels``, see
    :mod:`dwrprune.cost.runtimes`), else wall-clock passes in turns (:func:`time_in_turns`)."""
    from .runtimes import RUNTIMES, layer_timing

    if layer_timing(runtime) == "wall":
        return time_in_turns(calls, threads, warmup, repeats, runtime)
    with _timing_threads(threads, repeats):
        return RUNTIMES.get(runtime)().time_kernels(calls, threads, warmup, repeats)


def time_forward(module: nn.Module, x: torch.Tensor, threads: int = 1, warmup: int = 5,
                 repeats: int = 20) -> list[float]:
    """:func:`time_in_turns` of one module."""
    return time_in_turns([(module, x)], threads, warmup, repeats)[0]


def quartiles(times: list[float]) -> tuple[float, float]:
    """First and third quartile of timed repeats (both the one time, for a single repeat)."""
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return q[0], q[2]


@contextmanager
def visiting(device: torch.device | str, *models: nn.Module | None, eval_mode: bool = False):
    """Run with ``models`` moved to ``device`` (and in eval mode, with ``eval_mode``); each
    goes back to its own device and mode afterwards: the rest of dwrprune (surgery, cost,
    checkpoints) works on CPU models, and a user's model is left as it was given."""
    homes = [(m, next(m.parameters(), torch.empty(0)).device, m.training)
             for m in models if m is not None]
    try:
        for m, _, _ in homes:
            m.to(device)
            if eval_mode:
                m.eval()
        yield
    finally:
        for m, home, training in homes:
            m.to(home)
            if eval_mode:
                m.train(training)


@contextmanager
def timing_inputs(models: list[tuple[nn.Module, int]], batch_size: int, device: str = "cpu",
                  in_channels: int | None = None):
    """``(module, input)`` pairs to time each ``(model, resolution)``: the model in eval
    mode on ``device`` and a random batch for it; each model goes back to its device and
    mode afterwards."""
    dev = check_device(device)
    for m, px in models:
        size = batch_size * (in_channels or first_conv_in_channels(m)) * px * px
        if size > MAX_INPUT_ELEMENTS:
            raise DwrpruneError(f"a timing batch of {batch_size} x {px}x{px} images is too "
                                f"large ({size} values, at most {MAX_INPUT_ELEMENTS}); lower "
                                "the batch size or the resolution")
    with visiting(dev, *(m for m, _ in models), eval_mode=True):
        yield [(m, torch.randn(batch_size, in_channels or first_conv_in_channels(m), px, px,
                               device=dev)) for m, px in models]


def measure_latencies(models: list[tuple[nn.Module, int]], batch_size: int = 1,
                      in_channels: int | None = None, threads: int = 1, warmup: int = 5,
                      repeats: int = 20, device: str = "cpu", runtime: str = "torch"
                      ) -> list[Latency]:
    """Median wall-clock of one forward pass of each ``(model, resolution)``, timed in turns
    (:func:`time_in_turns`) with ``threads`` CPU threads on ``device`` (the CPU, or a CUDA
    GPU timed with synchronisation) in ``runtime``."""
    if threads < 1 or batch_size < 1 or repeats < 1:
        raise DwrpruneError(f"threads, batch size and repeats must be >= 1, got {threads}, "
                            f"{batch_size}, {repeats}")
    with timing_inputs(models, batch_size, device, in_channels) as calls:
        times = time_in_turns(calls, threads, warmup, repeats, runtime)
    return [Latency(batch_size, threads, statistics.median(t), min(t), repeats, *quartiles(t),
                    device) for t in times]


def measure_latency(model: nn.Module, resolution: int, batch_size: int = 1,
                    in_channels: int | None = None, threads: int = 1, warmup: int = 5,
                    repeats: int = 20, device: str = "cpu") -> Latency:
    """:func:`measure_latencies` of one model."""
    return measure_latencies([(model, resolution)], batch_size, in_channels, threads, warmup,
                             repeats, device)[0]


@dataclass
class CostReport:
    macs: int
    params: int
    resolution: int
    latency: list[Latency]

    def as_dict(self) -> dict:
        d = asdict(self)
        d["latency"] = [asdict(x) for x in self.latency]
        return d


def cost_reports_side_by_side(models: list[tuple[nn.Module, int]],
                              latency_batches: tuple[int, ...] = (1, 64), threads: int = 1,
                              repeats: int = 20, in_channels: int | None = None
                              ) -> list[CostReport]:
    """The cost of models to be compared (an original and its pruned model, each with its
    resolution), their timed passes taking turns: a machine whose speed drifts slows them
    alike, so their ratio stays honest where two reports timed one after the other can show
    a pruned model slower than its original."""
    per_batch = [measure_latencies(models, b, in_channels, threads, repeats=repeats)
                 for b in latency_batches]
    return [CostReport(count_macs(m, res, in_channels), count_params(m), res,
                       [lat[i] for lat in per_batch]) for i, (m, res) in enumerate(models)]


def cost_report(model: nn.Module, resolution: int, in_channels: int | None = None,
                latency_batches: tuple[int, ...] = (1, 64), threads: int = 1,
                repeats: int = 20) -> CostReport:
    """:func:`cost_reports_side_by_side` of one model."""
    return cost_reports_side_by_side([(model, resolution)], latency_batches, threads, repeats,
                                     in_channels)[0]


def machine_stamp() -> dict:
    """Where a measurement was taken: torch version, CPU model, thread count."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"torch": torch.__version__, "cpu": cpu, "threads": torch.get_num_threads()}
