"""Embedded assets: the default detection model yolotune trained on its own generated data (see default.json)."""

from __future__ import annotations

import json
from pathlib import Path

ASSETS = Path(__file__).parent
MODELS = {"default": "default.pt"}


def resolve(name: str) -> Path | None:
    """Path of the embedded model called ``name`` ("default"), or None when ``name`` is not an embedded asset."""
    file = MODELS.get(name)
    return ASSETS / file if file else None


def default_model_record() -> dict:
    """How the default model was trained (command, seed, versions) and its held-out metrics."""
    return json.loads((ASSETS / "default.json").read_text())
