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


def export_onnx(model: nn.Module, path: str | os.PathLike, resolution: int,
                in_channels: int, opset: int | None = None) -> None:
    """Write ``model`` as ONNX; input ``input`` (N, C, R, R), output ``logits`` (N, classes)."""
    if opset is not None and opset not in SUPPORTED_OPSETS:
        raise DwrpruneError(f"opset {opset} is not supported; choose "
                            f"{SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1}")
    model = model.eval()
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
            if Path(tmp).joinpath(path.name + ".data").exists():
                os.replace(Path(tmp) / (path.name + ".data"), path.with_name(path.name + ".data"))
            os.replace(tmp_path, path)
            return
    raise DwrpruneError(f"ONNX export failed ({'; '.join(errors)})")
