"""Writing the deployable result of ``optimize``: the model file and the chosen DetectorOptions in one folder.

``models/artifact.py`` reads it back (``Detector(dir)``); the format is described there.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from yolotune.models.artifact import ARTIFACT_FILE, ARTIFACT_VERSION
from yolotune.options import DetectorOptions


def write_artifact(out: str | Path, model_file: str | Path, options: DetectorOptions, record: dict) -> Path:
    """Copy the model file into ``out`` and write the options (``DetectorOptions.saved``) and the tuning record
    next to it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model_file = Path(model_file)
    target = out / ("model" + model_file.suffix)
    if model_file.resolve() != target.resolve():
        shutil.copyfile(model_file, target)
    data = {"version": ARTIFACT_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "model": target.name, "options": options.saved(), **record}
    (out / ARTIFACT_FILE).write_text(json.dumps(data, indent=1))
    return out
