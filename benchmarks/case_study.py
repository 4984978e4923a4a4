"""Case study on one GPU, in one process: each lever's contribution to yolov8n (the default model).

Model + NMS throughput (random input, identity geometry), one lever added at a time from an Ultralytics-like
start (eager FP32, no Conv+BN fusion, per-image NMS loop, batch 1): fusion, FP16, GPU batched NMS, CUDA graph,
compile (torch.compile), batching. Then leave-one-out from the full configuration (each lever removed alone).
End to end (512 real-photo 720p JPEGs -> detections): decode placement (nvJPEG vs CPU threads), top-k cap, input
size; and the in-memory frame path with pinned vs pageable uploads. Writes case_study.json / .md under $OUT.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, make_photo_jpegs  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from yolotune import Detector  # noqa: E402
from yolotune.profile.end_to_end import measure_end_to_end  # noqa: E402
from yolotune.profile.sweep import measure_batch  # noqa: E402

BATCH = int(os.environ.get("CASE_BATCH", "64"))

START = dict(precision="fp32", fuse=False, nms="loop", cuda_graph=False, rect=False)
LADDER = [  # (lever, options added)
    ("start: eager FP32, unfused, per-image NMS loop, batch 1", {}),
    ("+ Conv+BN fusion", dict(fuse=True)),
    ("+ FP16", dict(precision="fp16")),
    ("+ GPU batched NMS (Triton)", dict(nms="auto")),
    ("+ CUDA graph (model + NMS)", dict(cuda_graph=True)),
    ("+ compile (torch.compile)", dict(compile="inductor")),
]


def model_rate(opts: dict, batch: int) -> dict:
    with Detector("default", device="cuda", batch=max(batch, 1), **opts) as det:
        h, w = det.imgsz
        p = measure_batch(det, batch, h, w, repeats=5, min_seconds=0.3)
    return {"images_per_s": p.images_per_s, "ms_per_batch": p.latency_ms, "spread_ms": p.latency_spread_ms}


def main() -> None:
    out = Path(os.environ.get("OUT") or tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("YOLOTUNE_ENGINE_CACHE", tempfile.mkdtemp(prefix="case-engines-"))
    rows: dict = {"env": environment(), "batch": BATCH, "ladder": [], "leave_one_out": [], "e2e": []}
    opts = dict(START)
    prev = None
    for lever, add in LADDER:
        opts.update(add)
        r = {"lever": lever, "options": dict(opts), "batch": 1, **model_rate(opts, 1)}
        r["step_gain"] = r["images_per_s"] / prev if prev else 1.0
        prev = r["images_per_s"]
        rows["ladder"].append(r)
        print(json.dumps(r), flush=True)
    full = dict(opts)
    r = {"lever": f"+ batching (1 -> {BATCH})", "options": full, "batch": BATCH, **model_rate(full, BATCH)}
    r["step_gain"] = r["images_per_s"] / prev
    rows["ladder"].append(r)
    rows["total_gain"] = r["images_per_s"] / rows["ladder"][0]["images_per_s"]
    full_rate = r["images_per_s"]
    print(json.dumps(r), flush=True)
    for lever, undo in (("fusion", dict(fuse=False)), ("FP16", dict(precision="fp32")), ("GPU NMS", dict(nms="loop", cuda_graph=False)),
                        ("CUDA graph", dict(cuda_graph=False)), ("compile", dict(compile=False))):
        o = {**full, **undo}
        r = {"without": lever, "options": o, "batch": BATCH, **model_rate(o, BATCH)}
        r["lever_gain"] = full_rate / r["images_per_s"]
        rows["leave_one_out"].append(r)
        print(json.dumps(r), flush=True)
        (out / "case_study.json").write_text(json.dumps(rows, indent=1, default=str))

    work = Path(tempfile.mkdtemp(prefix="case-"))
    photos = make_photo_jpegs(work / "photos", 512)
    base = dict(precision="fp16", batch=BATCH, compile="inductor")
    for name, o in (("chosen pipeline (nvJPEG decode on the GPU)", {}), ("decode + letterbox in CPU threads", dict(preprocess="cpu")),
                    ("top-k 512 candidates into NMS", dict(topk=512)), ("input 512x512", dict(imgsz=512))):
        with Detector("default", device="cuda", **{**base, **o}) as det:
            measure_end_to_end(det, photos[: 2 * BATCH], 1)  # warm-up: graphs, compile cache
            e = measure_end_to_end(det, photos, 3)
        rows["e2e"].append({"variant": name, "options": o, "images_per_s": e["images_per_s"], "std": e["std"]})
        print(json.dumps(rows["e2e"][-1]), flush=True)
    frame = np.random.default_rng(0).integers(0, 255, (720, 1280, 3), dtype=np.uint8)
    with Detector("default", device="cuda", batch=8, precision="fp16") as det:
        for mode in ("pinned", "pageable"):
            det.frames.upload_mode = mode
            det.detect([frame] * 8)
            ts = []
            for _ in range(50):
                t0 = time.perf_counter()
                det.detect([frame] * 8)
                ts.append(time.perf_counter() - t0)
            rows[f"frames_b8_{mode}_ms"] = float(np.median(ts) * 1e3)
    rows["pinned_gain"] = rows["frames_b8_pageable_ms"] / rows["frames_b8_pinned_ms"]
    (out / "case_study.json").write_text(json.dumps(rows, indent=1, default=str))
    (out / "case_study.md").write_text(markdown(rows))
    print(markdown(rows))


def markdown(r: dict) -> str:
    dev = r["env"].get("device", "GPU")
    lines = [f"# Case study: yolov8n (default) levers on {dev}", "",
             "Model + NMS, one lever added at a time (same process, same device):", "",
             "| step | batch | images/s | gain of this step |", "|---|---|---|---|"]
    lines += [f"| {x['lever']} | {x['batch']} | {x['images_per_s']:.0f} | {x['step_gain']:.2f}x |" for x in r["ladder"]]
    lines += ["", f"Total: {r['total_gain']:.1f}x.", "", "Leave one out (full configuration at batch "
              f"{r['batch']}, each lever removed alone):", "", "| without | images/s | the lever is worth |", "|---|---|---|"]
    lines += [f"| {x['without']} | {x['images_per_s']:.0f} | {x['lever_gain']:.2f}x |" for x in r["leave_one_out"]]
    lines += ["", "End to end, 512 real-photo 720p JPEGs:", "", "| variant | images/s | std |", "|---|---|---|"]
    lines += [f"| {x['variant']} | {x['images_per_s']:.0f} | {x['std']:.0f} |" for x in r["e2e"]]
    lines += ["", f"In-memory 720p frames, batch 8: pinned upload {r['frames_b8_pinned_ms']:.2f} ms, pageable "
              f"{r['frames_b8_pageable_ms']:.2f} ms ({r['pinned_gain']:.2f}x).", "",
              "INT8: measured on the CPU with ONNX Runtime (benchmarks/results/optimize/cpu_bench.json); this GPU "
              "stack has no INT8 convolution path (no TensorRT)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
