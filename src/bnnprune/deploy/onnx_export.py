"""ONNX export of the float-simulated BNN (±1 activations and weights as float ops)."""

from __future__ import annotations

import copy
import os
import warnings

import torch
from torch import nn

from bnnprune.engine.errors import EngineError
from bnnprune.nn.frozen import freeze_binary_layers

__all__ = ["export_onnx"]


@torch.no_grad()
def export_onnx(model: nn.Module, path: str | os.PathLike[str],
                input_shape: tuple[int, int, int], opset: int = 17) -> None:
    """Write ``model`` (eval mode) as ONNX: input "input", output "logits", dynamic batch.

    Binary layers become float ops on ±1 values (sign as Where, ±1 padding as Pad), so any
    ONNX runtime reproduces PyTorch; runtimes that fuse BatchNorm into a convolution may flip
    a sign where a pre-activation is exactly zero."""
    if len(tuple(input_shape)) != 3:
        raise EngineError(f"input_shape must be (C, H, W), got {input_shape}")
    sim = freeze_binary_layers(copy.deepcopy(model).cpu().float().eval())
    dummy = torch.zeros(1, *(int(s) for s in input_shape))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(sim, (dummy,), os.fspath(path), dynamo=False,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                              opset_version=opset)
    except Exception as e:  # noqa: BLE001 - the exporter raises many types
        raise EngineError(f"ONNX export failed: {str(e).splitlines()[0]}") from None
