"""What yolotune needs to know about a detection model, whatever format it came in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class ModelLoadError(Exception):
    """A model file that cannot be used; the message names the file and what was found."""


@dataclass(frozen=True)
class ModelSpec:
    """Format-independent description of a detection model.

    layout: "v8" ([B, 4+nc, N]), "v5" ([B, N, 5+nc]) or "end2end" ([B, max_det, 6]); see ops.postprocess.
    fixed_batch / fixed_hw: set when the model only accepts that batch size / input size (static ONNX exports).
    """

    path: str
    format: str  # "ultralytics" | "onnx"
    names: dict[int, str]
    layout: str
    stride: int = 32
    imgsz: tuple[int, int] = (640, 640)
    fixed_batch: int | None = None
    fixed_hw: tuple[int, int] | None = None
    input_dtype: str = "float32"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.names)


@dataclass
class LoadedModel:
    """A ModelSpec plus the object that runs it: a torch.nn.Module or an onnxruntime.InferenceSession."""

    spec: ModelSpec
    runnable: Any


def no_such_model(path: str) -> ModelLoadError:
    """A model file that is not there, and where weights come from: yolotune fetches none."""
    return ModelLoadError(f"{path}: no such model file. yolotune downloads nothing: give your own trained weights "
                          "(an Ultralytics .pt, an ONNX export, or an artifact folder from `yolotune optimize`), "
                          "`default` (the embedded model), or a .yaml config (random weights, for speed work only)")
