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

from yolotune.models.spec import ModelLoadError

ARTIFACT_FILE = "yolotune.json"
ARTIFACT_VERSION = 1


@dataclass
class Artifact:
    root: Path
    model_path: Path
    options: dict
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
    problem = _record_problem(record)
    if problem:
        raise ArtifactError(f"{where}: {problem}; re-create it with `yolotune optimize`")
    model_path = root / record["model"]
    inside = root.resolve()
    if model_path.resolve().parent != inside:  # symlinks followed: the file itself must live in the folder
        raise ArtifactError(f"{where}: 'model' must name a file inside the artifact's folder, not {record['model']!r}")
    if not model_path.is_file():
        raise ArtifactError(f"{where}: the artifact's model file {record['model']} is missing")
    return Artifact(root, model_path, dict(record.get("options", {})), record)


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _number(lo: float, hi: float):
    return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and lo <= v <= hi


def _optional(check):
    return lambda v: v is None or check(v)


def _one_of(*values):
    return lambda v: isinstance(v, (str, bool)) and v in values


def _imgsz(v) -> bool:
    return _positive_int(v) or (isinstance(v, list) and len(v) == 2 and all(_positive_int(x) for x in v))


def _boolean(v) -> bool:
    return isinstance(v, bool)


# option -> (check, what it must be). Detector's options and the model loaders' (engine threads, batch split, seed);
# not --trust-model: an artifact cannot vouch for its own model file.
OPTION_SCHEMA = {
    "device": (lambda v: isinstance(v, str), "a device name"),
    "half": (_optional(_boolean), "true, false or null"),
    "precision": (_one_of("fp32", "fp16", "bf16"), "one of fp32, fp16, bf16"),
    "batch": (_positive_int, "a positive integer"),
    "imgsz": (_optional(_imgsz), "a positive integer or [height, width]"),
    "conf": (_number(0, 1), "a number from 0 to 1"),
    "iou": (_number(0, 1), "a number from 0 to 1"),
    "max_det": (_positive_int, "a positive integer"),
    "topk": (_positive_int, "a positive integer"),
    "agnostic": (_boolean, "true or false"),
    "nms": (_one_of("auto", "triton", "torchvision", "loop"), "one of auto, triton, torchvision, loop"),
    "rect": (_optional(_boolean), "true, false or null"),
    "cuda_graph": (_boolean, "true or false"),
    "compile": (_one_of(False, True, "none", "off", "inductor", "jit", "inductor-untuned", "aoti"),
                "false, true, inductor, inductor-untuned or aoti"),
    "fuse": (_boolean, "true or false"),
    "cudnn_benchmark": (_optional(_boolean), "true, false or null"),
    "gpu_decode": (_boolean, "true or false"),
    "preprocess": (_one_of("auto", "gpu", "cpu"), "one of auto, gpu, cpu"),
    "workers": (_optional(_positive_int), "a positive integer or null"),
    "threads": (_optional(_positive_int), "a positive integer or null"),
    "split_batch": (_boolean, "true or false"),
    "seed": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "class_bias": (_optional(_number(-1e6, 1e6)), "a number or null"),
    "end2end": (_optional(_boolean), "true, false or null"),
    "max_image_pixels": (_optional(lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
                         "a non-negative integer or null"),
}
RECORD_FIELDS = {"version", "created", "model", "options", "tuned_on", "objective", "report"}


def _record_problem(record) -> str | None:
    """What is wrong with a parsed yolotune.json, or None."""
    if not isinstance(record, dict):
        return f"must be a JSON object, not {type(record).__name__}"
    unknown = sorted(set(record) - RECORD_FIELDS)
    if unknown:
        return f"unknown field {unknown[0]!r} (known: {', '.join(sorted(RECORD_FIELDS))})"
    version = record.get("version")
    if not _positive_int(version):
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
        if key not in OPTION_SCHEMA:
            return f"unknown option 'options.{key}' (known: {', '.join(sorted(OPTION_SCHEMA))})"
        check, expected = OPTION_SCHEMA[key]
        if not check(value):
            return f"'options.{key}' must be {expected}, not {value!r}"
    for key in ("created", "tuned_on", "objective", "report"):
        if key in record and not isinstance(record[key], str):
            return f"'{key}' must be a string, not {record[key]!r}"
    return None


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
