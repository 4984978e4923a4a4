"""Stand-ins for the model in runtime tests: engines of known speed that find nothing."""

import time

import numpy as np
import torch

from yolotune.types import Detections, InputRef


class SlowDetector:
    """Takes ``delay`` seconds per batch and finds nothing: overload, or a pipeline of known capacity, on demand."""

    device = torch.device("cpu")

    def __init__(self, delay: float):
        self.delay, self.batches = delay, []

    def detect(self, frames):
        self.batches.append(len(frames))
        time.sleep(self.delay)
        return [Detections(InputRef("frame"), f.shape[:2], np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                           np.zeros(0, np.int64)) for f in frames]
