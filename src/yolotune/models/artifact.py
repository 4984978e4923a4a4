"""Reading the deployable result of ``optimize``: a folder with the model file and the options it was tuned with.

``yolotune.json`` holds the DetectorOptions (precision, batch, CUDA graph, compile, NMS, ...), so ``Detector(dir)``,
``yolotune predict dir`` and ``yolotune run dir`` rebuild the tuned pipeline without tuning again. A compiled engine
keeps its AOTInductor package in ``engines/`` (loaded in about a second on the same torch and GPU; rebuilt from
``model.pt`` otherwise) and torch.compile's cache in ``inductor-cache/``. ``tune/artifact.py`` writes it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from yolotune.models.spec import ModelLoadError
from yolotune.options import NOT_SAVED, OPTION_NAMES, DetectorOptions, option_problem

ARTIFACT_FILE = "yolotune.json"
ARTIFACT_VERSION = 1
ENGINE_CACHE_ENV = "YOLOTUNE_ENGINE_CACHE"  # where compiled engines keep their packages (engine/aoti.py)
RECORD_FIELDS = {"version", "created", "model", "options", "tuned_on", "objective", "report"}


@dataclass
class Artifact:
    root: Path
    model_path: Path
    options: DetectorOptions
    record: dict


class ArtifactError(ModelLoadError):
    """A yolotune.json that is not what ``optimize`` writes; the message names the field and what is wrong."""


def is_artifact(path) -> bool:
    return isinstance(path, (str, Path)) and (Path(path) / ARTIFACT_FILE).is_file()


def read_artifact(path: str | Path) -> Artifact:
    """The artifact at ``path``, validated: every field known and well-formed, the model file inside the folder."""
    root = Path(path)
    where = root / ARTIFACT_FILE
    try:
        record = json.loads(where.read_text(encoding="utf-8"))
    except OSError as e:
        raise ArtifactError(f"{where}: cannot be read ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{where}: not valid JSON ({e})") from None
    problem = record_problem(record)
    if problem:
        raise ArtifactError(f"{where}: {problem}; re-create it with `yolotune optimize`")
    model_path = root / record["model"]
    inside = root.resolve()
    if model_path.resolve().parent != inside:  # symlinks followed: the file itself must live in the folder
        raise ArtifactError(f"{where}: 'model' must name a file inside the artifact's folder, not {record['model']!r}")
    if not model_path.is_file():
        raise ArtifactError(f"{where}: the artifact's model file {record['model']} is missing")
    return Artifact(root, model_path, DetectorOptions.from_dict(record.get("options", {}), saved=True), record)


def record_problem(record) -> str | None:
    """What is wrong with a parsed yolotune.json, or None."""
    if not isinstance(record, dict):
        return f"must be a JSON object, not {type(record).__name__}"
    unknown = sorted(set(record) - RECORD_FIELDS)
    if unknown:
        return f"unknown field {unknown[0]!r} (known: {', '.join(sorted(RECORD_FIELDS))})"
    version = record.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        return f"'version' must be a positive integer, not {version!r}"
    if version > ARTIFACT_VERSION:
        return f"version {version} is newer than this yolotune reads ({ARTIFACT_VERSION}): upgrade yolotune"
    if "model" not in record:
        return "'model' is missing (the model file's name)"
    model = record["model"]
    if not isinstance(model, str) or not model:
        return f"'model' must be a file name, not {model!r}"
    if Path(model).name != model or model in (".", ".."):
        return f"'model' must name a file inside the artifact's folder, not {model!r}"
    options = record.get("options", {})
    if not isinstance(options, dict):
        return f"'options' must be an object of Detector options, not {type(options).__name__}"
    for key, value in options.items():
        if key not in OPTION_NAMES or key in NOT_SAVED:  # not trust_model: an artifact cannot vouch for its model
            known = ", ".join(sorted(set(OPTION_NAMES) - NOT_SAVED))
            return f"unknown option 'options.{key}' (known: {known})"
        problem = option_problem(key, value)
        if problem:
            return f"'options.{problem.split(' ', 1)[0]}' {problem.split(' ', 1)[1]}"
    for key in ("created", "tuned_on", "objective", "report"):
        if key in record and not isinstance(record[key], str):
            return f"'{key}' must be a string, not {record[key]!r}"
    return None


def use_engine_cache(root: str | Path) -> None:
    """Point the compiled-engine caches (AOTInductor packages, Inductor's JIT cache) into the artifact, before
    anything compiles: kernels built while tuning are what the artifact reloads."""
    for env, sub in ((ENGINE_CACHE_ENV, "engines"), ("TORCHINDUCTOR_CACHE_DIR", "inductor-cache")):
        path = Path(root) / sub
        path.mkdir(parents=True, exist_ok=True)
        os.environ[env] = str(path.resolve())


def artifact_options(model, options: DetectorOptions | None, overrides: dict) -> tuple[object, DetectorOptions]:
    """The model to load and the options to run it with: an artifact folder gives its model file and its tuned
    options (``options``, when given, replaces them; ``overrides`` still win); anything else is returned as it is."""
    if not is_artifact(model):
        return model, (options or DetectorOptions()).replace(**overrides)
    art = read_artifact(model)
    chosen = (options or art.options).replace(**overrides)
    if chosen.compile:
        use_engine_cache(art.root)
    return str(art.model_path), chosen
