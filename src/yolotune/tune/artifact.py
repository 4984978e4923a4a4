"""The deployable result of ``optimize``: a directory with the model file and the chosen pipeline options.

``yolotune.json`` holds the Detector options (precision, batch, CUDA graph, compile, NMS, ...), so ``Detector(dir)``,
``yolotune predict dir`` and ``yolotune run dir`` rebuild the tuned pipeline without tuning again. A compiled engine
keeps its AOTInductor package in ``engines/`` (loaded in about a second on the same torch and GPU; rebuilt from
``model.pt`` otherwise) and torch.compile's cache in ``inductor-cache/``.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

ARTIFACT_FILE = "yolotune.json"
ARTIFACT_VERSION = 1


@dataclass
class Artifact:
    root: Path
    model_path: Path
    options: dict
    record: dict


def is_artifact(path) -> bool:
    return isinstance(path, (str, Path)) and (Path(path) / ARTIFACT_FILE).is_file()


def read_artifact(path: str | Path) -> Artifact:
    root = Path(path)
    try:
        record = json.loads((root / ARTIFACT_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{root}: not a readable yolotune artifact ({e})") from e
    model_path = root / record["model"]
    if not model_path.is_file():
        raise ValueError(f"{root}: the artifact's model file {record['model']} is missing")
    return Artifact(root, model_path, dict(record.get("options", {})), record)


def use_engine_cache(root: str | Path) -> None:
    """Point the compiled-engine caches (AOTInductor packages, Inductor's JIT cache) into the artifact, before
    anything compiles: kernels built while tuning are what the artifact reloads."""
    from yolotune.engine.aoti import CACHE_ENV

    for env, sub in ((CACHE_ENV, "engines"), ("TORCHINDUCTOR_CACHE_DIR", "inductor-cache")):
        path = Path(root) / sub
        path.mkdir(parents=True, exist_ok=True)
        os.environ[env] = str(path.resolve())


def write_artifact(out: str | Path, model_file: str | Path, options: dict, record: dict) -> Path:
    """Copy the model file into ``out`` and write the options and the tuning record next to it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model_file = Path(model_file)
    target = out / ("model" + model_file.suffix)
    if model_file.resolve() != target.resolve():
        shutil.copyfile(model_file, target)
    data = {"version": ARTIFACT_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "model": target.name, "options": options, **record}
    (out / ARTIFACT_FILE).write_text(json.dumps(data, indent=1))
    return out


def accepts_artifacts(init):
    """Wrap ``Detector.__init__``: an artifact directory as the model supplies the options it was tuned with; options
    passed explicitly still win."""
    sig = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self, model, *args, **kwargs):
        if not is_artifact(model):
            return init(self, model, *args, **kwargs)
        art = read_artifact(model)
        bound = sig.bind_partial(self, model, *args, **kwargs)
        explicit = {k: v for k, v in bound.arguments.items() if k not in ("self", "model")}
        explicit.update(explicit.pop("model_options", {}))
        if art.options.get("compile"):
            use_engine_cache(art.root)
        return init(self, str(art.model_path), **{**art.options, **explicit})

    return wrapper
