"""yolotune: run YOLO object detection as fast as the hardware allows, and show why it is slow when it is not."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["Detections", "Detector", "DetectorOptions", "ErrorRecord", "InputRef", "LoadedModel", "ModelLoadError", "ModelSpec", "load_model",
           "predict_to_sinks"]

# Imported on first use: a decoder process (yolotune.serve.decoders) imports this package, and must not pay for
# torch (about 2 s and 300 MB per process).
_HOME = {"Detections": "yolotune.types", "ErrorRecord": "yolotune.types", "InputRef": "yolotune.types",
         "Detector": "yolotune.pipeline", "DetectorOptions": "yolotune.options", "LoadedModel": "yolotune.models", "ModelLoadError": "yolotune.models",
         "ModelSpec": "yolotune.models", "load_model": "yolotune.models", "predict_to_sinks": "yolotune.pipeline.run"}

if TYPE_CHECKING:
    from yolotune.models import LoadedModel, ModelLoadError, ModelSpec, load_model
    from yolotune.options import DetectorOptions
    from yolotune.pipeline import Detector
    from yolotune.pipeline.run import predict_to_sinks
    from yolotune.types import Detections, ErrorRecord, InputRef


def __getattr__(name: str):
    if name in _HOME:
        value = getattr(importlib.import_module(_HOME[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'yolotune' has no attribute {name!r}")
