"""yolotune: run YOLO object detection as fast as the hardware allows, and show why it is slow when it is not."""

from yolotune.models import LoadedModel, ModelLoadError, ModelSpec, load_model
from yolotune.pipeline import Detector
from yolotune.types import Detections, ErrorRecord, InputRef

__version__ = "0.1.0"
__all__ = ["Detections", "Detector", "ErrorRecord", "InputRef", "LoadedModel", "ModelLoadError", "ModelSpec", "load_model"]
