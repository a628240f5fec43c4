"""ONNX export of a (pruned) model, with a dynamic batch dimension."""

from __future__ import annotations

import contextlib
import io
import os
import warnings

import torch
from torch import nn

from .errors import DwrpruneError


def export_onnx(model: nn.Module, path: str | os.PathLike, resolution: int,
                in_channels: int, opset: int | None = None) -> None:
    """Write ``model`` as ONNX; input ``input`` (N, C, R, R), output ``logits`` (N, classes)."""
    model = model.eval()
    x = torch.randn(2, in_channels, resolution, resolution)
    kwargs = {"input_names": ["input"], "output_names": ["logits"]}
    if opset is not None:
        kwargs["opset_version"] = opset
    errors = []
    for dynamo in (True, False):  # the torch.export path first, TorchScript as fallback
        extra = ({"dynamic_shapes": ({0: torch.export.Dim("batch", min=1)},)} if dynamo else
                 {"dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}}})
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (x,), str(path), dynamo=dynamo, **kwargs, **extra)
            return
        except Exception as e:  # noqa: BLE001 - report both exporters' reasons below
            errors.append(f"{'dynamo' if dynamo else 'torchscript'}: {type(e).__name__}: "
                          f"{str(e).splitlines()[0][:150] if str(e) else ''}")
    raise DwrpruneError(f"ONNX export failed ({'; '.join(errors)})")
