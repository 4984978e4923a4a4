"""yolotune optimize on 2 CPU cores on the default model with its held-out split (generator seed 1,
the seed the training record validates on), then side by side in this process: ONNX Runtime FP32 (ours), the chosen
INT8 models, and Ultralytics' own ONNX export run with ONNX Runtime, batch 1 at 640x640, timed in interleaved rounds;
then yolotune's ONNX Runtime engine at batches 1-8 with the batch split across the cores and not.
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


def interleaved_engines(paths: dict[str, str], batches: tuple[int, ...], rounds: int = 3, window: float = 1.0) -> dict:
    """images/s of yolotune's ONNX Runtime engine for each model and batch, the batch split across the cores (one
    single-threaded run per part, the default) and not (one run on every core): rounds visiting every engine in
    turn, the best round of each."""
    import torch

    from yolotune.engine.ort import OrtEngine
    from yolotune.models.onnx import load_onnx

    engines = {(k, split): OrtEngine(load_onnx(p, split_batch=split)) for k, p in paths.items() for split in (True, False)}
    out: dict = {}
    for b in batches:
        x = torch.rand(b, 3, 640, 640)
        samples: dict = {key: [] for key in engines}
        for _ in range(rounds):
            for key, e in engines.items():
                e(x)
                n, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < window:
                    e(x)
                    n += b
                samples[key].append(n / (time.perf_counter() - t0))
        for (k, split), v in samples.items():
            out.setdefault(k, {}).setdefault("split" if split else "one run", {})[b] = round(max(v), 1)
    return out


def main() -> None:
    out = Path(os.environ.get("OUT") or HERE / "results" / "optimize")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="optimize-cpu-"))
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    val = write_dataset(work / "heldout", n, seed=1, workers=os.cpu_count())
    t0 = time.time()
    report = optimize("default", val, device="cpu", out=work / "artifact", budget_s=900, max_batch=8, workdir=work / "candidates",
                      progress=lambda m: print(m, flush=True)).to_dict()
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
    # the batch split across the cores (engine/ort.py) against one run on every core, batches 1-8
    eng = interleaved_engines(paths, (1, 2, 4, 8))
    rows["engine_images_per_s"] = eng
    fp32 = eng["yolotune_onnx_fp32"]
    for method in ("minmax", "entropy", "percentile"):
        q = eng.get(f"int8_{method}")
        if q:
            rows[f"int8_{method}_split_vs_fp32_split_same_batch"] = {b: q["split"][b] / fp32["split"][b] for b in q["split"]}
            rows[f"int8_{method}_best_vs_fp32_best"] = max(q["split"].values()) / max(max(fp32["split"].values()), max(fp32["one run"].values()))
            rows[f"int8_{method}_best_vs_fp32_batch1"] = max(q["split"].values()) / fp32["one run"][1]
    rows["fp32_map50_95"] = by["onnxruntime fp32"]["map50_95"]
    rows["reference_torch_map50_95"] = by["torch fp32"]["map50_95"]
    (out / "cpu_bench.json").write_text(json.dumps(rows, indent=1))
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
