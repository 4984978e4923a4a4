"""yolotune optimize on yolov8n (default) and yolov8m, then side by side in this process:
the chosen artifact vs eager PyTorch FP16 at the same batch (model + NMS), batch-1 latency, and end to end on 512
720p photos. Writes optimize_<model>.json / .md and optimize_bench.json under $OUT (artifacts stay in /tmp)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, make_photo_jpegs  # noqa: E402

from yolotune import Detector, load_model  # noqa: E402
from yolotune.models.ultralytics import save_ultralytics_checkpoint  # noqa: E402
from yolotune.profile.end_to_end import measure_end_to_end  # noqa: E402
from yolotune.profile.sweep import measure_batch  # noqa: E402
from yolotune.tune.search import optimize  # noqa: E402


def side_by_side(artifact: Path, model_file: str, photos: list[str]) -> dict:
    row: dict = {}
    with Detector(str(artifact)) as tuned:
        b = tuned.batch
        h, w = tuned.imgsz
        with Detector(model_file, batch=b, cuda_graph=False, precision="fp16") as eager:
            e = measure_batch(eager, b, h, w, repeats=5, min_seconds=0.3)
            e1 = measure_batch(eager, 1, h, w, repeats=5, min_seconds=0.3)
            t = measure_batch(tuned, b, h, w, repeats=5, min_seconds=0.3)
            t1 = measure_batch(tuned, 1, h, w, repeats=5, min_seconds=0.3)
            row.update(batch=b, eager_fp16_images_per_s=e.images_per_s, tuned_images_per_s=t.images_per_s,
                       model_ratio=t.images_per_s / e.images_per_s, eager_fp16_b1_ms=e1.latency_ms, tuned_b1_ms=t1.latency_ms)
            measure_end_to_end(eager, photos[: 2 * b], 1)
            measure_end_to_end(tuned, photos[: 2 * b], 1)
            ee = measure_end_to_end(eager, photos, 3)
            te = measure_end_to_end(tuned, photos, 3)
            row.update(e2e_eager_fp16_images_per_s=ee["images_per_s"], e2e_tuned_images_per_s=te["images_per_s"],
                       e2e_tuned_std=te["std"], e2e_ratio=te["images_per_s"] / ee["images_per_s"])
    return row


def main() -> None:
    out = Path(os.environ.get("OUT") or tempfile.mkdtemp())
    work = Path(tempfile.mkdtemp(prefix="optimize-bench-"))
    photos = make_photo_jpegs(work / "photos", 512)
    m_pt = work / "yolov8m.pt"
    save_ultralytics_checkpoint(load_model("yolov8m.yaml", seed=0, class_bias=-2.0), m_pt)
    from yolotune.assets import resolve

    rows = {"env": environment()}
    budgets = {"yolov8n": float(os.environ.get("BUDGET_N", "120")), "yolov8m": float(os.environ.get("BUDGET_M", "150"))}
    for name, model in (("yolov8n", "default"), ("yolov8m", str(m_pt))):
        if name not in os.environ.get("MODELS", "yolov8n,yolov8m"):
            continue
        art = work / f"art-{name}"
        t0 = time.time()
        # the random-init yolov8m detects nothing labelled: guard it against its own FP32 detections on the photos
        data = None if model == "default" else work / "photos"
        report = optimize(model, data, device="cuda", out=art, budget_s=budgets[name], val_images=200,
                          progress=lambda m: print(f"[{name}] {m}", flush=True)).to_dict()
        shutil.copy(art / "report.md", out / f"optimize_{name}.md")
        shutil.copy(art / "report.json", out / f"optimize_{name}.json")
        print((art / "report.md").read_text(), flush=True)
        model_file = str(resolve(model) or model)
        import subprocess

        # a fresh process's first detections from the artifact, and where that time goes
        code = ("import json,time;t=[time.perf_counter()];import numpy as np,torch;torch.zeros(1,device='cuda');"
                "t.append(time.perf_counter());from yolotune import Detector;"
                f"d=Detector({str(art)!r});t.append(time.perf_counter());"
                "d.detect([np.zeros((720,1280,3),np.uint8)]*min(d.batch,4));t.append(time.perf_counter());"
                "d.detect([np.zeros((720,1280,3),np.uint8)]*min(d.batch,4));t.append(time.perf_counter());"
                "print(json.dumps({'import torch + CUDA context': t[1]-t[0], 'Detector(artifact)': t[2]-t[1],"
                "'first detect (capture, autotune)': t[3]-t[2], 'second detect': t[4]-t[3], 'total': t[3]-t[0]}))")
        fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        parts = json.loads(fresh.stdout.strip().splitlines()[-1]) if fresh.returncode == 0 else None
        report["reload_fresh_process_s"] = parts["total"] if parts else fresh.stderr[-500:]
        report["reload_fresh_process_parts_s"] = parts
        rows[name] = {"optimize_s": round(time.time() - t0, 1), "chosen": report["chosen"], "reload_s": report["reload_s"],
                      "reload_fresh_process_s": report["reload_fresh_process_s"],
                      "reload_fresh_process_parts_s": report["reload_fresh_process_parts_s"],
                      **side_by_side(art, model_file, photos)}
        print(json.dumps(rows[name], default=str), flush=True)
        (out / "optimize_bench.json").write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
