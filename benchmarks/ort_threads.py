"""CPU: why yolotune's ONNX Runtime engine splits a batch across the cores (engine/ort.py). The default
model, FP32 and INT8 (Entropy calibration on 24 generated held-out images), 640x640, in interleaved rounds:
- one image per run with ONNX Runtime's intra-op threads = 1 and = the cores: how each model scales across cores;
- one single-threaded session per core running images back to back, free (no batch to join): the ceiling of the
  split;
- the engine itself at batch = cores, split and not.
Writes ort_threads_cpu.json under $OUT (default benchmarks/results/optimize)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import onnxruntime as ort
import torch

from yolotune.data.synth import write_dataset
from yolotune.engine.ort import OrtEngine
from yolotune.interpreter import usable_cores
from yolotune.models import load_model
from yolotune.models.export import export_onnx
from yolotune.models.onnx import load_onnx
from yolotune.tune.int8 import calibration_batches, quantize_int8


def session(path: str, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def ms_per_image(s: ort.InferenceSession, x, window: float) -> float:
    s.run(None, {"images": x})
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < window:
        s.run(None, {"images": x})
        n += 1
    return (time.perf_counter() - t0) / n * 1e3


def free_running(path: str, cores: int, x, window: float) -> float:
    """images/s of one single-threaded session per core, each running images back to back."""
    sessions = [session(path, 1) for _ in range(cores)]
    for s in sessions:
        s.run(None, {"images": x})
    counts = [0] * cores
    stop = time.perf_counter() + window

    def loop(i: int) -> None:
        while time.perf_counter() < stop:
            sessions[i].run(None, {"images": x})
            counts[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(cores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / window


def engine_rate(path: str, split: bool, b: int, window: float) -> float:
    e = OrtEngine(load_onnx(path, split_batch=split))
    x = torch.rand(b, 3, 640, 640)
    e(x)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < window:
        e(x)
        n += b
    return n / (time.perf_counter() - t0)


def main() -> None:
    out = Path(os.environ.get("OUT") or Path(__file__).resolve().parent / "results" / "optimize")
    work = Path(tempfile.mkdtemp(prefix="ort-threads-"))
    cores = usable_cores()
    # a dynamic batch, so the engine rows can split it (one image per run reads the same)
    fp32 = export_onnx(load_model("default"), work / "fp32.onnx", imgsz=(640, 640), dynamic_batch=True)
    ds = write_dataset(work / "heldout", 24, seed=1, workers=cores)
    cal = calibration_batches(sorted(str(p) for p in Path(ds).rglob("*.jpg")), (640, 640), limit=24)
    paths = {"fp32": str(fp32), "int8": str(quantize_int8(fp32, work / "int8.onnx", cal, method="entropy"))}
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    rows: dict = {k: {"ms_1_thread": [], f"ms_{cores}_threads": [], "free_running_images_per_s": [],
                      f"engine_b{cores}_split": [], f"engine_b{cores}_one_run": []} for k in paths}
    x = cal[0]
    for _ in range(rounds):
        for k, p in paths.items():
            rows[k]["ms_1_thread"].append(ms_per_image(session(p, 1), x, 1.0))
            rows[k][f"ms_{cores}_threads"].append(ms_per_image(session(p, cores), x, 1.0))
            rows[k]["free_running_images_per_s"].append(free_running(p, cores, x, 1.5))
            rows[k][f"engine_b{cores}_split"].append(engine_rate(p, True, cores, 1.5))
            rows[k][f"engine_b{cores}_one_run"].append(engine_rate(p, False, cores, 1.5))
    best = {k: {m: (min(v) if m.startswith("ms") else max(v)) for m, v in r.items()} for k, r in rows.items()}
    for k, b in best.items():
        b["scaling_1_to_all_cores"] = b["ms_1_thread"] / b[f"ms_{cores}_threads"]
    result = {"cores": cores, "rounds": rounds, "best": best, "samples": rows,
              "int8_vs_fp32": {m: (best["fp32"][m] / best["int8"][m] if m.startswith("ms")
                                   else best["int8"][m] / best["fp32"][m]) for m in rows["fp32"]}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "ort_threads_cpu.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({"best": best, "int8_vs_fp32": result["int8_vs_fp32"]}, indent=1))


if __name__ == "__main__":
    main()
