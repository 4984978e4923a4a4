"""Test models built on the fly (no downloads): a random-init yolov8n whose head emits many scored boxes."""

from __future__ import annotations

from pathlib import Path

import torch

from yolotune.models import load_model


def save_biased_checkpoint(path: Path, cfg: str = "yolov8n.yaml", class_bias: float = -2.0, seed: int = 0) -> Path:
    """An Ultralytics-loadable .pt of ``cfg`` with calibrated random weights and dense scores."""
    import ultralytics

    loaded = load_model(cfg, class_bias=class_bias, seed=seed)
    model = loaded.runnable.model
    model.args = {"imgsz": 640, "task": "detect"}
    torch.save({"model": model, "train_args": dict(model.args), "version": ultralytics.__version__}, path)
    return path
