"""Model loaders: user model file -> LoadedModel (ModelSpec + runnable). Loaders register by file suffix."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from yolotune.models.spec import LoadedModel, ModelLoadError, ModelSpec

Loader = Callable[..., LoadedModel]
_LOADERS: dict[str, Loader] = {}


def register_loader(*suffixes: str) -> Callable[[Loader], Loader]:
    def wrap(fn: Loader) -> Loader:
        for s in suffixes:
            _LOADERS[s] = fn
        return fn

    return wrap


def load_model(model: str | Path | LoadedModel, **options) -> LoadedModel:
    """Load a detection model by file suffix (.pt/.yaml through Ultralytics, .onnx through onnxruntime), or the
    embedded model by name ("default")."""
    if isinstance(model, LoadedModel):
        return model
    from yolotune.assets import resolve

    embedded = resolve(str(model))
    path = str(embedded) if embedded is not None else str(model)
    suffix = Path(path).suffix.lower()
    if suffix == ".yml":
        suffix = ".yaml"
    loader = _LOADERS.get(suffix)
    if loader is None:
        known = ", ".join(sorted(_LOADERS))
        raise ModelLoadError(f"{path}: unsupported model format {suffix or '(no suffix)'!r}; expected one of {known}")
    return loader(path, **options)


# Importing the loader modules registers them; neither imports its heavy backend until a model is loaded.
from yolotune.models import onnx as _onnx  # noqa: E402,F401
from yolotune.models import ultralytics as _ultralytics  # noqa: E402,F401

__all__ = ["LoadedModel", "ModelLoadError", "ModelSpec", "load_model", "register_loader"]
