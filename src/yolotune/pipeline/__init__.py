"""The pipeline: Detector wires sources -> decode -> preprocess -> engine -> postprocess -> results.

detector.py  configuration, the per-batch steps (letterbox, launch, collect), predict() and detect()
producer.py  the thread that reads, decodes and letterboxes batch i+1 while batch i computes
buffers.py   static per-batch buffers: slots (streamed batches) and frame buffers (in-memory frames)
"""

from yolotune.pipeline.detector import Detector, resolve_device

__all__ = ["Detector", "resolve_device"]
