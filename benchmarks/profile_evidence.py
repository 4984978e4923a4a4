"""Profile yolov8n (the trained default) and yolov8m with the plain PyTorch pipeline and with
yolotune's optimized one, on the same 720p photos, with --verify. Writes profile_<model>_<pipeline>.json under $OUT.

Usage (GPU machine, via scripts/gpu-check profile): python3 benchmarks/profile_evidence.py [n_images]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import make_photo_jpegs  # noqa: E402

from yolotune import load_model  # noqa: E402
from yolotune.models.ultralytics import save_ultralytics_checkpoint  # noqa: E402
from yolotune.profile import profile  # noqa: E402
from yolotune.report.terminal import print_profile  # noqa: E402


def main(argv: list[str]) -> None:
    out = Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="profile-"))
    work = Path(tempfile.mkdtemp(prefix="profile-evidence-"))
    n = int(argv[0]) if argv else 256
    photos = make_photo_jpegs(work / "photos", n)
    yolov8m = work / "yolov8m.pt"
    save_ultralytics_checkpoint(load_model("yolov8m.yaml", seed=0, class_bias=-2.0), yolov8m)
    runs = [("yolov8n", "default", "plain", min(n, 128)), ("yolov8n", "default", "optimized", n),
            ("yolov8m", str(yolov8m), "plain", min(n, 128)), ("yolov8m", str(yolov8m), "optimized", n)]
    only = os.environ.get("PROFILE_RUNS")
    for name, model, pipeline, images in runs:
        if only and f"{name}_{pipeline}" not in only.split(","):
            continue
        t0 = time.time()
        try:
            p = profile(model, photos, pipeline=pipeline, images=images, repeats=3, verify=True,
                        progress=lambda m: print(f"[{name} {pipeline}] {m}", flush=True)).to_dict()
        except Exception as e:
            print(f"[{name} {pipeline}] failed: {type(e).__name__}: {e}\n{traceback.format_exc()[-3000:]}", flush=True)
            continue
        p["model"] = name if model == "default" else f"{name} (random init, class bias -2)"
        p["model_path"] = "default (yolov8n trained)" if model == "default" else "yolov8m.yaml seed 0"
        (out / f"profile_{name}_{pipeline}.json").write_text(json.dumps(p))
        print_profile(p)
        print(f"[{name} {pipeline}] {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
