"""Inductor options for the compiled engine, side by side in one process on one GPU: yolov8n (default model)
model + NMS, FP16, CUDA graph, batch BATCH on the 384x640 canvas of 720p frames, against eager FP16 at the same
batch and canvas. Options tried: none (mode "default"), coordinate-descent tuning of the generated kernels,
freezing (weights as constants: constant folding and conv layout planning). Writes $OUT/compile_options.json.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment  # noqa: E402

import torch  # noqa: E402

from yolotune import Detector  # noqa: E402
from yolotune.profile.sweep import measure_batch  # noqa: E402

BATCH = int(os.environ.get("BATCH", "256"))
CANVAS = (384, 640)
VARIANTS = {"default": {}, "coordinate_descent_tuning": {"coordinate_descent_tuning": True},
            "freezing": {"freezing": True}}


def rate(det: Detector) -> float:
    return measure_batch(det, BATCH, *CANVAS, repeats=5, min_seconds=0.5).images_per_s


def main() -> None:
    out = Path(os.environ.get("OUT") or tempfile.mkdtemp())
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor-options-"))
    rows: dict = {"env": environment(), "batch": BATCH, "canvas": list(CANVAS), "variants": {}}
    with Detector("default", device="cuda", batch=BATCH, cuda_graph=False) as eager:
        rows["eager_fp16_images_per_s"] = rate(eager)
    print("eager", rows["eager_fp16_images_per_s"], flush=True)
    import torch._inductor.config as cfg

    for name, opts in VARIANTS.items():
        if name not in os.environ.get("VARIANTS", ",".join(VARIANTS)):
            continue
        torch._dynamo.reset()
        saved = {k: getattr(cfg, k) for k in opts}
        try:
            for k, v in opts.items():
                setattr(cfg, k, v)
            t0 = time.perf_counter()
            det = Detector("default", device="cuda", batch=BATCH, compile="inductor", rect=True)
            first = rate(det)
            compile_s = time.perf_counter() - t0
            second = rate(det)
            with Detector("default", device="cuda", batch=BATCH, cuda_graph=False) as eager:
                e = rate(eager)
            rows["variants"][name] = {"compile_and_first_s": round(compile_s, 1), "images_per_s": round(max(first, second), 1),
                                      "eager_now_images_per_s": round(e, 1), "over_eager": round(max(first, second) / e, 3)}
        except Exception as ex:  # noqa: BLE001
            rows["variants"][name] = {"error": f"{type(ex).__name__}: {str(ex)[:400]}"}
        finally:
            for k, v in saved.items():
                setattr(cfg, k, v)
        print(name, json.dumps(rows["variants"][name]), flush=True)
        (out / "compile_options.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
