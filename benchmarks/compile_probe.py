"""Engine variants side by side on one GPU (model + NMS through the Detector, yolov8n default, FP16): eager,
CUDA graph, torch.compile + graph, AOTInductor + graph, and AOTInductor with Inductor options (freezing, 1x1
convolutions as matmuls). Also AOTInductor's compile time and its package's load time in a fresh process.
Writes compile_probe.json under $OUT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment  # noqa: E402

import torch  # noqa: E402

from yolotune import Detector  # noqa: E402
from yolotune.profile.sweep import measure_batch  # noqa: E402

BATCHES = [int(b) for b in os.environ.get("PROBE_BATCHES", "1,64,128").split(",")]


def variant(name: str, inductor: dict | None = None, **opts) -> dict:
    import torch._inductor.config as cfg

    saved = {k: getattr(cfg, k) for k in (inductor or {})}
    for k, v in (inductor or {}).items():
        setattr(cfg, k, v)
    os.environ["YOLOTUNE_ENGINE_CACHE"] = tempfile.mkdtemp(prefix=f"probe-{name.replace(' ', '_')}-")
    row = {"name": name, "options": opts, "inductor": inductor or {}}
    try:
        t0 = time.perf_counter()
        with Detector("default", device="cuda", batch=max(BATCHES), **opts) as det:
            h, w = det.imgsz
            for b in BATCHES:
                p = measure_batch(det, b, h, w, repeats=5, min_seconds=0.3)
                row[f"b{b}"] = {"images_per_s": p.images_per_s, "ms": p.latency_ms, "spread_ms": p.latency_spread_ms}
                if "first_s" not in row:
                    row["first_s"] = round(time.perf_counter() - t0, 1)
            aoti = getattr(det.engine, "aoti", None)
            if aoti is not None:
                row["package"] = aoti.last_build
    except Exception as e:
        row["error"] = f"{type(e).__name__}: {str(e)[:600]}"
    finally:
        for k, v in saved.items():
            setattr(cfg, k, v)
    print(json.dumps(row), flush=True)
    return row


def fresh_load(cache: str) -> dict:
    code = ("import time,numpy as np;t=time.perf_counter();from yolotune import Detector;"
            "d=Detector('default',device='cuda',batch=8,compile='aoti');d.detect([np.zeros((720,1280,3),np.uint8)]*3);"
            "print(time.perf_counter()-t, d.engine.aoti.last_build['built'], d.engine.aoti.last_build['seconds'])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "YOLOTUNE_ENGINE_CACHE": cache})
    if r.returncode:
        return {"error": r.stderr[-800:]}
    total, built, load = r.stdout.split()[-3:]
    return {"first_detections_s": float(total), "built": built == "True", "package_load_s": float(load)}


def main() -> None:
    out = Path(os.environ.get("OUT") or tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    rows = {"env": environment(), "batches": BATCHES, "variants": []}
    plan = [
        ("eager fp16", None, dict(cuda_graph=False, rect=False)),
        ("graph fp16", None, dict(rect=False)),
        ("inductor+graph fp16", None, dict(compile="inductor", rect=False)),
        ("aoti+graph fp16", None, dict(compile="aoti")),
        ("aoti freezing+graph fp16", {"freezing": True}, dict(compile="aoti")),
        ("aoti freezing+1x1mm+graph fp16", {"freezing": True, "conv_1x1_as_mm": True}, dict(compile="aoti")),
    ]
    only = os.environ.get("PROBE_ONLY")
    for name, ind, opts in plan:
        if only and name not in only.split(";"):
            continue
        rows["variants"].append(variant(name, ind, **opts))
        if name == "aoti+graph fp16":
            rows["aoti_fresh_process"] = fresh_load(os.environ["YOLOTUNE_ENGINE_CACHE"])
            print(json.dumps(rows["aoti_fresh_process"]), flush=True)
        (out / "compile_probe.json").write_text(json.dumps(rows, indent=1, default=str))
    eager = next((v for v in rows["variants"] if v["name"] == "eager fp16" and "error" not in v), None)
    if eager:
        for v in rows["variants"]:
            for b in BATCHES:
                if f"b{b}" in v:
                    v[f"b{b}"]["vs_eager"] = v[f"b{b}"]["images_per_s"] / eager[f"b{b}"]["images_per_s"]
    (out / "compile_probe.json").write_text(json.dumps(rows, indent=1, default=str))
    for v in rows["variants"]:
        print(v["name"], {k: (round(v[k]["images_per_s"]), round(v[k].get("vs_eager", 0), 2)) for k in v if k.startswith("b")})


if __name__ == "__main__":
    main()
