"""ONNX Runtime engine (CPU execution provider, or CUDA when onnxruntime-gpu is installed)."""

from __future__ import annotations

import numpy as np
import torch

from yolotune.engine.base import Engine, register_engine
from yolotune.models.spec import LoadedModel


class OrtEngine(Engine):
    name = "onnxruntime"

    def __init__(self, model: LoadedModel):
        self.session = model.runnable
        self.spec = model.spec
        self.device = torch.device("cpu")
        self.input_dtype = torch.float16 if model.spec.input_dtype == "float16" else torch.float32
        self.fixed_batch = model.spec.fixed_batch
        self.fixed_hw = model.spec.fixed_hw
        self.input_name = model.spec.extra["input_name"]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().cpu().numpy())
        step = self.fixed_batch or arr.shape[0]
        outputs = []
        for start in range(0, arr.shape[0], step):  # static-batch exports take `step` images per run
            chunk = arr[start : start + step]
            if chunk.shape[0] < step:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], step - chunk.shape[0], axis=0)])
            outputs.append(self.session.run(None, {self.input_name: chunk})[0])
        return torch.from_numpy(np.concatenate(outputs)[: arr.shape[0]])


@register_engine("onnx")
def _build(model: LoadedModel, device: torch.device, precision: str, compile: bool = False, fuse: bool = True) -> Engine:
    return OrtEngine(model)
