"""Test models built on the fly (no downloads): a random-init yolov8n whose head emits many scored boxes."""

from __future__ import annotations

from pathlib import Path

from yolotune.models import load_model
from yolotune.models.ultralytics import save_ultralytics_checkpoint


def save_biased_checkpoint(path: Path, cfg: str = "yolov8n.yaml", class_bias: float = -2.0, seed: int = 0) -> Path:
    """An Ultralytics-loadable .pt of ``cfg`` with calibrated random weights and dense scores."""
    return save_ultralytics_checkpoint(load_model(cfg, class_bias=class_bias, seed=seed), path)
