"""What a model runs in when it is timed: the runtimes a latency target can name.

A runtime turns a module and an example input into a *timed call*: a function of no
arguments that runs one forward pass and returns when it is done.  Everything that measures
latency (whole models, one layer of the lookup table, the final verdict) goes through
:meth:`Runtime.prepare`, so a new runtime is one small class::

    @RUNTIMES.register
    class MyRuntime:
        name = "my-runtime"
        devices = ("cpu",)

        def check(self, device: str) -> None:   # installed, and the device is there?
            pass

        def prepare(self, module, x, threads):  # -> a call that runs module(x) once
            return lambda: module(x)

A runtime that can report the time of a layer's own kernels (without the per-call overhead
and the layout changes at a one-layer graph's edges, which a layer inside a network does not
pay) also defines ``time_kernels(calls, threads, warmup, repeats)``; the per-layer lookup
table of the latency model is then filled from it (:func:`layer_timing` says which a runtime
uses), and otherwise from wall-clock passes.  An optional ``layer_repeats`` sets how many
passes of each layer the table takes (default 10; kernel times are cheap to take).

The three shipped:

    torch        PyTorch eager, CPU (fixed threads) or CUDA (synchronised)
    onnxruntime  the module exported to ONNX and run in an InferenceSession with fixed
                 intra-op threads (CPU): what most CPU servers run; its layers' kernel
                 times come from ONNX Runtime's profiler
    cuda-graph   PyTorch on CUDA, captured once as a CUDA graph and replayed: what a GPU
                 server runs at small batch, free of the CPU's kernel-launch time
"""

from __future__ import annotations

import bisect
import contextlib
import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

from ..errors import DwrpruneError
from ..registry import Registry

TimedCall = Callable[[], None]


class Runtime(Protocol):
    name: str
    devices: tuple[str, ...]

    def check(self, device: str) -> None:
        """One clear error when this runtime cannot run on ``device`` here."""

    def prepare(self, module: nn.Module, x: torch.Tensor, threads: int) -> TimedCall:
        """A call that runs ``module(x)`` once (``module`` in eval mode, ``x`` on the
        device) and returns when the result is ready; it is called under
        ``torch.inference_mode``."""


LAYER_REPEATS = 10  # passes of each layer shape the lookup table takes, unless the runtime
# says otherwise (``layer_repeats``)


RUNTIMES: Registry = Registry("runtime")


def _check_cuda(name: str) -> None:
    if not torch.cuda.is_available():
        raise DwrpruneError(f"the {name} runtime needs a CUDA GPU, and this machine has none; "
                            "time on the CPU (--device cpu, --runtime torch or onnxruntime)")


@RUNTIMES.register
class TorchEager:
    """PyTorch eager mode; on CUDA each pass is synchronised."""

    name = "torch"
    devices = ("cpu", "cuda")

    def check(self, device: str) -> None:
        if device == "cuda":
            _check_cuda("torch (cuda)")

    def prepare(self, module: nn.Module, x: torch.Tensor, threads: int) -> TimedCall:
        if x.device.type != "cuda":
            return lambda: module(x)

        def call() -> None:
            module(x)
            torch.cuda.synchronize()

        return call


def onnx_bytes(module: nn.Module, x: torch.Tensor) -> bytes:
    """``module`` as an ONNX model for input ``x`` (fixed shape), in memory: the TorchScript
    exporter first (fast), the torch.export one where that fails; one error naming what
    neither could export."""
    errors = []
    for dynamo in (False, True):
        f = io.BytesIO()
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                torch.onnx.export(module, (x,), f, dynamo=dynamo, input_names=["input"],
                                  output_names=["output"])
            return f.getvalue()
        except Exception as e:  # noqa: BLE001 - both exporters' reasons go into the error
            errors.append(f"{'torch.export' if dynamo else 'TorchScript'}: "
                          f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
    raise DwrpruneError(f"{type(module).__name__} cannot be exported to ONNX, so it cannot be "
                        f"timed in onnxruntime ({'; '.join(errors)})")


@RUNTIMES.register
class OnnxRuntime:
    """ONNX Runtime on the CPU: one InferenceSession per module, ``threads`` intra-op
    threads, sequential execution, all graph optimisations (as a server deploys it)."""

    name = "onnxruntime"
    devices = ("cpu",)
    layer_repeats = 50  # a kernel time costs one pass of one layer: take many
    # ops ONNX Runtime adds at a one-layer graph's edges to change the layout (NCHWc), which
    # a layer inside a network pays only where its neighbours' layouts differ
    LAYOUT_OPS = ("ReorderInput", "ReorderOutput")

    def check(self, device: str) -> None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise DwrpruneError("the onnxruntime runtime needs onnxruntime: pip install "
                                "'dwrprune[onnx]'") from None

    @staticmethod
    def session(module: nn.Module, x: torch.Tensor, threads: int,
                profile_prefix: str | None = None):
        """An InferenceSession of ``module`` exported for ``x``, and its feed."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        if profile_prefix is not None:
            opts.enable_profiling = True
            opts.profile_file_prefix = profile_prefix
        sess = ort.InferenceSession(onnx_bytes(module, x.cpu()), opts,
                                    providers=["CPUExecutionProvider"])
        return sess, {sess.get_inputs()[0].name: x.cpu().numpy()}

    def prepare(self, module: nn.Module, x: torch.Tensor, threads: int) -> TimedCall:
        sess, feed = self.session(module, x, threads)
        return lambda: sess.run(None, feed)

    def time_kernels(self, calls: list[tuple[nn.Module, torch.Tensor]], threads: int,
                     warmup: int, repeats: int) -> list[list[float]]:
        """Milliseconds of each ``(module, input)``'s own kernels per pass, read from ONNX
        Runtime's profiler: every node's kernel time, less the layout changes at the
        graph's edges (:attr:`LAYOUT_OPS`).  A one-layer graph's wall clock is mostly the
        call's overhead and those changes (a 16 µs conv costs about 10 µs more per
        call), which a layer inside a network does not pay.  ``warmup`` passes of each,
        then ``repeats`` rounds of one pass of each in turn."""
        with tempfile.TemporaryDirectory() as tmp:
            sessions = [self.session(m, x, threads, os.path.join(tmp, f"layer{i}"))
                        for i, (m, x) in enumerate(calls)]
            for sess, feed in sessions:
                for _ in range(warmup):
                    sess.run(None, feed)
            for _ in range(repeats):
                for sess, feed in sessions:
                    sess.run(None, feed)
            out = [kernel_ms_per_run(sess.end_profiling(), self.LAYOUT_OPS)
                   for sess, _ in sessions]
        if any(len(t) != warmup + repeats for t in out):
            import onnxruntime as ort

            raise DwrpruneError(f"onnxruntime {ort.__version__}'s profile does not give each "
                                "run's kernel times as expected (model_run and *_kernel_time "
                                "events), so layers cannot be timed for the lookup table; "
                                "use onnxruntime >= 1.18, < 2 as dwrprune[onnx] installs")
        return [t[warmup:] for t in out]


def kernel_ms_per_run(profile: str, leave_out: tuple[str, ...] = ()) -> list[float]:
    """From an ONNX Runtime profile (the JSON trace ``end_profiling`` writes), the summed
    kernel time (ms) of the nodes of each run in order, ops in ``leave_out`` left out."""
    with open(profile) as f:
        events = json.load(f)
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                  if e.get("cat") == "Session" and e.get("name") == "model_run")
    totals = [0.0] * len(runs)
    starts = [a for a, _ in runs]
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time") or \
                e.get("args", {}).get("op_name") in leave_out:
            continue
        i = bisect.bisect_right(starts, e["ts"]) - 1  # the run the node ran in
        if i >= 0 and e["ts"] <= runs[i][1]:
            totals[i] += e["dur"] / 1e3
    return totals


@RUNTIMES.register
class CudaGraph:
    """PyTorch on CUDA, captured as a CUDA graph after a warm-up on a side stream, then
    replayed: one launch per pass, so batch-1 timings measure the GPU, not the CPU."""

    name = "cuda-graph"
    devices = ("cuda",)

    def check(self, device: str) -> None:
        _check_cuda("cuda-graph")

    def prepare(self, module: nn.Module, x: torch.Tensor, threads: int) -> TimedCall:
        static = x.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.no_grad(), torch.cuda.stream(stream):
            for _ in range(3):
                module(static)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            module(static)

        def call() -> None:
            graph.replay()
            torch.cuda.synchronize()

        return call


def layer_repeats(runtime: str) -> int:
    """Passes of each layer shape the lookup table takes in ``runtime``."""
    return getattr(RUNTIMES.get(runtime), "layer_repeats", LAYER_REPEATS)


def layer_timing(runtime: str) -> str:
    """How the lookup table times a layer in ``runtime``: ``kernel`` (the runtime reports
    its kernels' time, :meth:`OnnxRuntime.time_kernels`) or ``wall`` (wall-clock passes)."""
    return "kernel" if hasattr(RUNTIMES.get(runtime), "time_kernels") else "wall"


def check_runtime(runtime: str, device: str) -> Runtime:
    """The registered runtime, checked for ``device`` on this machine."""
    rt = RUNTIMES.get(runtime)()
    if device not in rt.devices:
        raise DwrpruneError(f"the {runtime} runtime runs on {' or '.join(rt.devices)}, not "
                            f"{device!r}")
    rt.check(device)
    return rt
