"""OpenVINO with NNCF's INT8 as the CPU peer of yolotune's ONNX Runtime INT8, side by side in one process on the
default model: Ultralytics' own export(format="openvino") FP32 and export(format="openvino", int8=True) (NNCF
post-training quantization), against yolotune's ONNX Runtime FP32, INT8 (percentile, all layers) and INT8 with
accuracy control. Every model calibrates on the same 32 generated scenes (seed 102) and is scored the same way:
Ultralytics' predict (its letterbox and NMS, conf 0.001) on the validation scenes optimize generates (seed 101)
and on scenes of another seed (303), COCO mAP50-95 by yolotune's evaluation. Speed: each model alone at batch 1
on its own runtime (ONNX Runtime or OpenVINO, all cores), interleaved rounds, the median. Needs the ultralytics,
openvino and nncf packages. Writes openvino_peer_cpu.json under $OUT (or the working directory).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment  # noqa: E402

import numpy as np  # noqa: E402

from yolotune import Detector  # noqa: E402
from yolotune.assets import resolve  # noqa: E402
from yolotune.data.evaluate import coco_metrics  # noqa: E402
from yolotune.data.synth import write_dataset  # noqa: E402
from yolotune.data.validate import accuracy_guard, guard_baseline, load_dataset  # noqa: E402
from yolotune.models import load_model  # noqa: E402
from yolotune.models.export import export_onnx  # noqa: E402
from yolotune.tune.int8 import calibrate, calibration_batches, quantize_with_ranges  # noqa: E402
from yolotune.tune.int8_control import accuracy_control  # noqa: E402

MAX_DROP = float(os.environ.get("MAX_DROP", "0.5"))
VAL = int(os.environ.get("VAL", "48"))


def ultralytics_map(model_path: str, data: Path) -> float:
    """mAP50-95 of a model run by Ultralytics' predict (same letterbox and NMS for every format)."""
    from ultralytics import YOLO

    gt, _ = load_dataset(data)
    ids = {im["file_name"]: im["id"] for im in gt["images"]}
    model = YOLO(model_path, task="detect")
    results = []
    for r in model.predict([str(data / "images" / n) for n in ids], imgsz=640, conf=0.001, iou=0.7, verbose=False,
                           stream=True, batch=1):
        image_id = ids[Path(r.path).name]
        for (x1, y1, x2, y2), s, c in zip(r.boxes.xyxy.tolist(), r.boxes.conf.tolist(), r.boxes.cls.tolist()):
            results.append({"image_id": image_id, "category_id": int(c), "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": s})  # the generated data's category ids are its class numbers
    return coco_metrics(gt, results).map50_95


def timers(models: dict[str, str], x: np.ndarray) -> dict:
    import onnxruntime as ort
    import openvino as ov

    run = {}
    core = ov.Core()
    for name, path in models.items():
        if path.endswith(".onnx"):
            s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            feed = {s.get_inputs()[0].name: x}
            run[name] = lambda s=s, feed=feed: s.run(None, feed)
        else:
            compiled = core.compile_model(path, "CPU", {"PERFORMANCE_HINT": "LATENCY"})
            request = compiled.create_infer_request()
            run[name] = lambda r=request: r.infer({0: x})
    samples = {n: [] for n in run}
    for fn in run.values():
        fn()
    for _ in range(8):
        for n, fn in run.items():
            t0, k = time.perf_counter(), 0
            while time.perf_counter() - t0 < 0.6:
                fn()
                k += 1
            samples[n].append((time.perf_counter() - t0) / k * 1e3)
    return {n: {"ms_median": round(statistics.median(v), 2), "ms_best": round(min(v), 2)} for n, v in samples.items()}


def main() -> None:
    from ultralytics import YOLO

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        val, other = write_dataset(work / "val101", VAL, seed=101), write_dataset(work / "val303", VAL, seed=303)
        cal_set = write_dataset(work / "cal102", 32, seed=102)
        pt = work / "default.pt"
        pt.write_bytes(Path(resolve("default")).read_bytes())
        fp32 = export_onnx(load_model(str(pt)), work / "fp32.onnx", imgsz=(640, 640), dynamic_batch=False)
        cal = calibration_batches(sorted(str(p) for p in (cal_set / "images").iterdir()), (640, 640), limit=32)
        ranges = calibrate(fp32, cal, "percentile", work)
        int8 = quantize_with_ranges(fp32, work / "int8.onnx", ranges, "percentile", len(cal))
        with Detector(str(fp32), device="cpu", batch=2, conf=0.001, rect=False) as ref:
            base = guard_baseline(ref, val)

        def drop(path):
            with Detector(str(path), device="cpu", batch=2, conf=0.001, rect=False) as det:
                return accuracy_guard(det, val, baseline=base).drop_points

        ctl_dir = work / "ctl"
        ctl_dir.mkdir()
        mixed = accuracy_control(fp32, ranges, "percentile", len(cal), drop, MAX_DROP, cal[:12], ctl_dir).model
        ov_fp32 = YOLO(str(pt)).export(format="openvino", imgsz=640)
        ov_int8 = YOLO(str(pt)).export(format="openvino", imgsz=640, int8=True, data=str(cal_set / "dataset.yaml"))
        models = {"onnxruntime fp32 (yolotune)": str(fp32), "onnxruntime int8 percentile (yolotune)": str(int8),
                  f"onnxruntime int8 mixed, max drop {MAX_DROP} (yolotune)": str(mixed),
                  "openvino fp32 (Ultralytics export)": str(ov_fp32),
                  "openvino int8 NNCF (Ultralytics export)": str(ov_int8)}
        rows = {}
        for name, path in models.items():
            rows[name] = {"map50_95_seed101": round(ultralytics_map(path, val), 4),
                          "map50_95_seed303": round(ultralytics_map(path, other), 4)}
            print(name, rows[name], flush=True)
        xmls = {n: (p if p.endswith(".onnx") else str(next(Path(p).glob("*.xml")))) for n, p in models.items()}
        speed = timers(xmls, np.random.default_rng(0).random((1, 3, 640, 640), dtype=np.float32))
        for name in rows:
            rows[name].update(speed[name])
            print(name, rows[name], flush=True)
    result = {"benchmark": "openvino_peer", "date": time.strftime("%Y-%m-%d"), "environment": environment(),
              "max_drop": MAX_DROP, "rows": rows, "command": "python benchmarks/openvino_peer.py (2-core machine)"}
    try:
        import nncf
        import openvino

        result["environment"].update(openvino=openvino.__version__, nncf=nncf.__version__)
    except ImportError:
        pass
    (Path(os.environ.get("OUT", ".")) / "openvino_peer_cpu.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
