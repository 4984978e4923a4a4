"""OpenVINO engine for ONNX models on the CPU (the ``openvino`` extra): the same file ONNX Runtime would run, FP32 or
INT8 QDQ, compiled by OpenVINO's CPU plugin. On the 2-core development machine it ran the default model's FP32
export at batch 1 in about half ONNX Runtime's time (benchmarks/results/optimize/openvino_peer_cpu.json), so
``optimize`` measures it beside ONNX Runtime and the guard and the clock choose.
"""

from __future__ import annotations

import numpy as np
import torch

from yolotune.engine.base import Engine
from yolotune.models.spec import LoadedModel


class OpenVinoUnavailable(ValueError):
    """OpenVINO is not installed: ``pip install 'yolotune[openvino]'``."""


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


class OpenVinoEngine(Engine):
    name = "openvino"

    def __init__(self, model: LoadedModel):
        try:
            import openvino as ov
        except ImportError as e:
            raise OpenVinoUnavailable("runtime 'openvino' needs OpenVINO: pip install 'yolotune[openvino]'") from e
        self.spec = model.spec
        self.device = torch.device("cpu")
        self.input_dtype = torch.float16 if model.spec.input_dtype == "float16" else torch.float32
        self.fixed_batch = model.spec.fixed_batch
        self.fixed_hw = model.spec.fixed_hw
        # one request at a time, every core on it: a batch is one inference
        self.compiled = ov.Core().compile_model(model.spec.path, "CPU", {"PERFORMANCE_HINT": "LATENCY"})
        self.request = self.compiled.create_infer_request()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().cpu().numpy())
        n = arr.shape[0]
        step = self.fixed_batch or n
        outputs = []
        for start in range(0, n, step):
            part = arr[start : start + step]
            if part.shape[0] < step:  # a static-batch export: padded with its last image
                part = np.concatenate([part, np.repeat(part[-1:], step - part.shape[0], axis=0)])
            result = self.request.infer({0: part})
            outputs.append(np.array(result[self.compiled.output(0)]))
        return torch.from_numpy(np.concatenate(outputs)[:n])
