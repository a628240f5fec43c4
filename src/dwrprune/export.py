"""ONNX export of a (pruned) model, with a dynamic batch dimension.

The torch.export-based exporter is tried first, TorchScript's as a fallback.  A requested
opset is checked in the written file: an exporter that silently wrote another opset does
not count, and nothing is left at the output path unless the export succeeded.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.onnx import _constants

from .errors import DwrpruneError, quote_error

SUPPORTED_OPSETS = range(_constants.ONNX_MIN_OPSET, _constants.ONNX_MAX_OPSET + 1)


def _written_opset(path: str) -> int | None:
    import onnx

    model = onnx.load(path, load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


@contextlib.contextmanager
def _quiet_logging():
    """The exporters log their fallbacks (with tracebacks) even when the export succeeds;
    dwrprune reports the outcome itself, in one line."""
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def export_onnx(model: nn.Module, path: str | os.PathLike, resolution: int | None = None,
                in_channels: int | None = None, opset: int | None = None,
                check: bool = True) -> list[Path]:
    """Write ``model`` as ONNX: input ``input`` (N, C, R, R), output ``logits`` (N, classes),
    a dynamic batch.  ``resolution`` and ``in_channels`` default to the model's spec.  The
    spec's input contract (side, channels, mean, std, dataset) goes into the ONNX metadata
    (``dwrprune.*`` keys), and with ``check`` the file is run once in onnxruntime and its
    output compared with PyTorch's.  Returns the files written: the ``.onnx``, and its
    ``.data`` weights file where the exporter wrote the weights beside it."""
    from .io.spec import spec_of

    if not isinstance(model, nn.Module):
        raise DwrpruneError(f"export_onnx needs an nn.Module, got {type(model).__name__}")
    spec = spec_of(model, required=False)
    if resolution is None or in_channels is None:
        if spec is None:
            raise DwrpruneError("export_onnx needs resolution= and in_channels= for a model "
                                "without a dwrprune spec")
        resolution = resolution or spec.resolution
        in_channels = in_channels or spec.in_channels
    was = model.training
    try:
        _export(model, path, resolution, in_channels, opset, spec)
    finally:
        model.train(was)  # the model is left in the mode it was given
    path = Path(path)
    written = [path] + ([path.with_name(path.name + ".data")]
                        if path.with_name(path.name + ".data").exists() else [])
    if check:
        check_onnx(model, path, resolution, in_channels)
    return written


def check_onnx(model: nn.Module, path: str | os.PathLike, resolution: int, in_channels: int,
               atol: float = 1e-3) -> float:
    """Run the exported file once in onnxruntime (one CPU thread) beside PyTorch; the largest
    difference of their logits, or one error when they disagree by more than ``atol``."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise DwrpruneError("checking an export needs onnxruntime: pip install "
                            "'dwrprune[onnx]' (or pass check=False)") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = torch.randn(2, in_channels, resolution, resolution,
                    generator=torch.Generator().manual_seed(0))
    was = model.training
    model.eval()
    with torch.no_grad():
        ref = model(x).numpy()
    model.train(was)
    got = sess.run(None, {"input": x.numpy()})[0]
    diff = float(abs(got - ref).max())
    if not diff <= atol * max(1.0, float(abs(ref).max())):
        raise DwrpruneError(f"{path} runs in onnxruntime but its output differs from "
                            f"PyTorch's by {diff:.3g}; the export is not faithful")
    return diff


def _contract(spec) -> dict[str, str]:
    """The deployment contract a spec holds, as ONNX metadata strings."""
    import json

    if spec is None:
        return {}
    return {"dwrprune.input_size": str(spec.resolution),
            "dwrprune.in_channels": str(spec.in_channels),
            "dwrprune.mean": json.dumps(spec.mean), "dwrprune.std": json.dumps(spec.std),
            "dwrprune.resize": spec.resize or "resize", "dwrprune.contract": spec.contract_line(),
            "dwrprune.dataset": str(spec.dataset), "dwrprune.model": str(spec.name),
            "dwrprune.point": json.dumps(spec.point)}


SINGLE_FILE_BYTES = 1 << 30  # below this, weights go inside the .onnx (protobuf caps at 2 GB)


def _add_metadata(path: str, meta: dict[str, str]) -> None:
    """Write ``meta`` into the file; a small model's weights are folded into it (one file)."""
    import onnx

    data = Path(path + ".data")
    small = data.exists() and data.stat().st_size < SINGLE_FILE_BYTES
    m = onnx.load(path, load_external_data=small)
    for k, v in meta.items():
        m.metadata_props.add(key=k, value=v)
    onnx.save(m, path)
    if small:
        data.unlink()


def _export(model: nn.Module, path, resolution: int, in_channels: int, opset: int | None,
            spec) -> None:
    if opset is not None and opset not in SUPPORTED_OPSETS:
        raise DwrpruneError(f"opset {opset} is not supported; choose "
                            f"{SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1}")
    model.eval()
    x = torch.randn(2, in_channels, resolution, resolution)
    kwargs = {"input_names": ["input"], "output_names": ["logits"]}
    if opset is not None:
        kwargs["opset_version"] = opset
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DwrpruneError(f"cannot create the folder for {path}: {e.strerror}") from None
    errors = []
    for dynamo in (True, False):  # the torch.export path first, TorchScript as fallback
        extra = ({"dynamic_shapes": ({0: torch.export.Dim("batch", min=1)},)} if dynamo else
                 {"dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}}})
        name = "dynamo" if dynamo else "torchscript"
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            tmp_path = str(Path(tmp) / path.name)
            try:
                with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                        contextlib.redirect_stderr(io.StringIO()), _quiet_logging():
                    warnings.simplefilter("ignore")
                    torch.onnx.export(model, (x,), tmp_path, dynamo=dynamo, **kwargs, **extra)
                written = _written_opset(tmp_path)
            except Exception as e:  # noqa: BLE001 - report both exporters' reasons below
                errors.append(f"{name}: {type(e).__name__}: {quote_error(e, 150)}")
                continue
            if opset is not None and written != opset:
                errors.append(f"{name}: wrote opset {written}, not {opset}")
                continue
            _add_metadata(tmp_path, _contract(spec))
            if Path(tmp).joinpath(path.name + ".data").exists():
                os.replace(Path(tmp) / (path.name + ".data"), path.with_name(path.name + ".data"))
            os.replace(tmp_path, path)
            return
    raise DwrpruneError(f"ONNX export failed ({'; '.join(errors)})")
