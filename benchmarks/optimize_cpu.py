"""Issue 5's CPU evidence (2 cores): yolotune optimize on the default model with its held-out split (generator seed 1,
the seed the training record validates on), then side by side in this process: ONNX Runtime FP32 (ours), the chosen
INT8 models, and Ultralytics' own ONNX export run with ONNX Runtime, batch 1 at 640x640, timed in interleaved rounds.
Writes cpu_report.md / cpu_report.json / cpu_bench.json under $OUT (default benchmarks/results/optimize)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from yolotune.assets import resolve
from yolotune.data.synth import write_dataset
from yolotune.tune.search import optimize

HERE = Path(__file__).resolve().parent


def interleaved_ms(paths: dict[str, str], threads: int, x: np.ndarray, rounds: int = 8, window: float = 0.6) -> dict:
    """Batch-1 ms per image of each model: rounds that visit every model in turn (so a noisy neighbour on a shared
    CPU slows all of them alike), the fastest round of each reported, with the median and spread."""
    sessions = {}
    for key, path in paths.items():
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        s.run(None, {s.get_inputs()[0].name: x})
        sessions[key] = s
    samples: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(rounds):
        for key, s in sessions.items():
            name, n, t0 = s.get_inputs()[0].name, 0, time.perf_counter()
            while time.perf_counter() - t0 < window:
                s.run(None, {name: x})
                n += 1
            samples[key].append((time.perf_counter() - t0) / n * 1e3)
    return {k: {"min_ms": min(v), "median_ms": sorted(v)[len(v) // 2], "max_ms": max(v)} for k, v in samples.items()}


def main() -> None:
    out = Path(os.environ.get("OUT") or HERE / "results" / "optimize")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="optimize-cpu-"))
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    val = write_dataset(work / "heldout", n, seed=1, workers=os.cpu_count())
    t0 = time.time()
    report = optimize("default", val, device="cpu", out=work / "artifact", budget_s=900, max_batch=8, workdir=work / "candidates",
                      progress=lambda m: print(m, flush=True))
    (out / "cpu_report.md").write_text((work / "artifact" / "report.md").read_text())
    (out / "cpu_report.json").write_text((work / "artifact" / "report.json").read_text())
    by = {c["name"]: c for c in report["candidates"]}
    from ultralytics import YOLO

    # Ultralytics writes its export next to the .pt: export a copy in the work folder, never into the package
    pt = work / "default.pt"
    shutil.copyfile(resolve("default"), pt)
    ul = YOLO(str(pt)).export(format="onnx", imgsz=640, dynamic=False, simplify=False, verbose=False)
    x = np.random.default_rng(0).random((1, 3, 640, 640), dtype=np.float32)
    threads = os.cpu_count() or 2
    paths = {"ultralytics_onnx": ul, "yolotune_onnx_fp32": by["onnxruntime fp32"]["model_file"]}
    for method in ("minmax", "entropy", "percentile"):
        c = by.get(f"onnxruntime int8 ({method})", {})
        if c.get("model_file"):
            paths[f"int8_{method}"] = c["model_file"]
    timing = interleaved_ms(paths, threads, x)
    rows = {"cores": threads, "optimize_s": round(time.time() - t0, 1), "chosen": report["chosen"]["name"],
            "timing": timing, "ultralytics_onnx_ms": timing["ultralytics_onnx"]["min_ms"],
            "yolotune_onnx_fp32_ms": timing["yolotune_onnx_fp32"]["min_ms"]}
    for method in ("minmax", "entropy", "percentile"):
        c = by.get(f"onnxruntime int8 ({method})", {})
        if f"int8_{method}" in timing:
            ms = rows[f"int8_{method}_ms"] = timing[f"int8_{method}"]["min_ms"]
            rows[f"int8_{method}_drop_points"] = c["drop_points"]
            rows[f"int8_{method}_status"] = c["status"]
            rows[f"int8_{method}_vs_fp32"] = rows["yolotune_onnx_fp32_ms"] / ms
            rows[f"int8_{method}_vs_ultralytics_onnx"] = rows["ultralytics_onnx_ms"] / ms
    b = int(report["chosen"]["options"].get("batch", 1))
    if b > 1:  # also at the chosen batch (Ultralytics' export has a fixed batch of 1, so ours only)
        xb = np.random.default_rng(0).random((b, 3, 640, 640), dtype=np.float32)
        tb = interleaved_ms({k: v for k, v in paths.items() if k != "ultralytics_onnx"}, threads, xb)
        rows["chosen_batch"] = b
        rows["timing_chosen_batch_per_image"] = {k: {kk: vv / b for kk, vv in v.items()} for k, v in tb.items()}
        for method in ("minmax", "entropy", "percentile"):
            if f"int8_{method}" in tb:
                rows[f"int8_{method}_vs_fp32_at_batch{b}"] = tb["yolotune_onnx_fp32"]["min_ms"] / tb[f"int8_{method}"]["min_ms"]
    rows["fp32_map50_95"] = by["onnxruntime fp32"]["map50_95"]
    rows["reference_torch_map50_95"] = by["torch fp32"]["map50_95"]
    (out / "cpu_bench.json").write_text(json.dumps(rows, indent=1))
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
