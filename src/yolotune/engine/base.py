"""Engine: runs a detection model on a prepared input batch and returns its raw head output."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable

import torch

from yolotune.models.spec import LoadedModel

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class Engine(ABC):
    """Runs [B, 3, H, W] input (already letterboxed, scaled to [0, 1]) to the model's raw output tensor."""

    name: str = "engine"
    device: torch.device
    input_dtype: torch.dtype = torch.float32
    channels_last: bool = False
    fixed_batch: int | None = None  # the model only accepts this batch size
    fixed_hw: tuple[int, int] | None = None  # the model only accepts this input size
    graph_capturable: bool = False  # can run inside a CUDA graph
    static_canvas: bool = False  # compiled for one input size: letterbox to the square canvas, not per-batch rect
    min_batch: int = 1  # smaller batches are padded to this (a compiled engine's batch 1 would be another compile)

    @abstractmethod
    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def warm_start(self, batch: int, hw: tuple[int, int]) -> bool:
        """Start-up work for the first call at ``batch`` on an ``hw`` canvas, done ahead (engines that load
        compiled code). True when there was some."""
        return False

    def describe(self) -> dict:
        return {
            "engine": self.name,
            "device": str(self.device),
            "dtype": str(self.input_dtype).replace("torch.", ""),
            "channels_last": self.channels_last,
        }


EngineBuilder = Callable[..., Engine]
_BUILDERS: dict[str, EngineBuilder] = {}


def register_engine(model_format: str) -> Callable[[EngineBuilder], EngineBuilder]:
    def wrap(fn: EngineBuilder) -> EngineBuilder:
        _BUILDERS[model_format] = fn
        return fn

    return wrap


def build_engine(model: LoadedModel, device: torch.device, precision: str, compile: bool | str = False,
                 fuse: bool = True, runtime: str = "auto") -> Engine:
    """The engine that runs ``model`` (by its format) on ``device`` at ``precision``; ``runtime`` "openvino" runs
    an ONNX model with OpenVINO instead of ONNX Runtime (on the CPU)."""
    from yolotune.engine import ort as _ort  # noqa: F401  (registers)
    from yolotune.engine import torch as _torch  # noqa: F401  (registers)

    if runtime == "openvino":
        if model.spec.format != "onnx":
            raise ValueError("runtime 'openvino' runs ONNX models: export one (yolotune export MODEL --out m.onnx) "
                             "or use an optimize artifact")
        if device.type != "cpu":
            raise ValueError("runtime 'openvino' runs on the CPU: add --device cpu")
        from yolotune.engine.openvino import OpenVinoEngine

        return OpenVinoEngine(model)

    builder = _BUILDERS.get(model.spec.format)
    if builder is None:
        raise ValueError(f"no engine for model format {model.spec.format!r}")
    return builder(model, device=device, precision=precision, compile=compile, fuse=fuse)
