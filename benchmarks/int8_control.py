"""INT8 accuracy control on the CPU, side by side in one process: the default model's INT8 calibrations all-INT8
(drop on the validation scenes optimize generates, seed 101, and on generated scenes of another seed, 303), the
calibration set's size (8 to 64 images), and the mixed models accuracy control makes (the most sensitive layer
groups back in float) with their speed at batch 8 against ONNX Runtime FP32 and PyTorch FP32.
Environment: METHODS (mse,percentile,minmax), SIZES (8,16,32,64), MAX_DROP (0.5,1.0), VAL (48). Writes
int8_control_cpu.json under $OUT (or the working directory).
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

import onnx  # noqa: E402

from yolotune import Detector  # noqa: E402
from yolotune.data.synth import write_dataset  # noqa: E402
from yolotune.data.validate import accuracy_guard, guard_baseline  # noqa: E402
from yolotune.models import load_model  # noqa: E402
from yolotune.models.export import export_onnx  # noqa: E402
from yolotune.profile.sweep import letterboxed_images, measure_batch  # noqa: E402
from yolotune.tune.batch import as_deployed  # noqa: E402
from yolotune.tune.int8 import calibrate, calibration_batches, quantize_with_ranges  # noqa: E402
from yolotune.tune.int8_control import accuracy_control, layer_groups  # noqa: E402

METHODS = os.environ.get("METHODS", "mse,percentile,minmax").split(",")
SIZES = [int(n) for n in os.environ.get("SIZES", "8,16,32,64").split(",")]
MAX_DROPS = [float(v) for v in os.environ.get("MAX_DROP", "0.5,1.0").split(",")]
VAL = int(os.environ.get("VAL", "48"))
HW = (640, 640)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fp32 = export_onnx(load_model("default"), work / "fp32.onnx", imgsz=HW, dynamic_batch=True)
        val, other = write_dataset(work / "val101", VAL, seed=101), write_dataset(work / "val303", VAL, seed=303)
        cal_set = write_dataset(work / "cal102", max(SIZES), seed=102)
        images = sorted(str(p) for p in (cal_set / "images").iterdir())
        bases = {}
        for name, data in (("seed101", val), ("seed303", other)):
            with Detector(str(fp32), device="cpu", batch=2, conf=0.001, rect=False) as ref:
                bases[name] = guard_baseline(ref, data)

        def drops(model: Path) -> dict:
            out = {}
            for name, data in (("seed101", val), ("seed303", other)):
                with Detector(str(model), device="cpu", batch=2, conf=0.001, rect=False) as det:
                    out[name] = round(accuracy_guard(det, data, baseline=bases[name]).drop_points, 3)
            return out

        def speed(model: str, batch: int = 8) -> float:
            with Detector(model, device="cpu", batch=batch, rect=False, precision="fp32") as det:
                h, w = det.imgsz
                with as_deployed(det):
                    sample = letterboxed_images(sorted(str(p) for p in (val / "images").iterdir()), (h, w), det.device)
                    return measure_batch(det, batch, h, w, repeats=3, min_seconds=1.0, sample=sample).images_per_s

        result: dict = {"benchmark": "int8_control", "date": time.strftime("%Y-%m-%d"), "environment": environment(),
                        "reference_map50_95": {k: round(b.map50_95, 4) for k, b in bases.items()},
                        "calibration_size": [], "control": [],
                        "command": "python benchmarks/int8_control.py (2-core development machine)"}
        for method in METHODS:  # how many calibration images are enough
            for n in SIZES:
                cal = calibration_batches(images, HW, limit=n)
                model = quantize_with_ranges(fp32, work / f"{method}-{n}.onnx", calibrate(fp32, cal, method, work),
                                             method, n)
                row = {"method": method, "images": n, "drop_points": drops(model)}
                result["calibration_size"].append(row)
                print(json.dumps(row), flush=True)
        cal = calibration_batches(images, HW, limit=32)
        fp32_rate, torch_rate = speed(str(fp32)), speed("default")
        result["speed_batch8"] = {"onnxruntime fp32": round(fp32_rate, 2), "torch fp32": round(torch_rate, 2)}
        groups = {g.name: g for g in layer_groups(onnx.load(str(fp32)))}
        for method in METHODS:
            ranges = calibrate(fp32, cal, method, work)
            all_int8 = quantize_with_ranges(fp32, work / f"{method}-all.onnx", ranges, method, len(cal))
            all_rate = speed(str(all_int8))
            for max_drop in MAX_DROPS:
                d = work / f"ctl-{method}-{max_drop}"
                d.mkdir()
                t0 = time.perf_counter()
                ctl = accuracy_control(fp32, ranges, method, len(cal),
                                       lambda path: drops(path)["seed101"], max_drop, cal[:12], d)
                seconds = time.perf_counter() - t0
                rate = speed(str(ctl.model))
                row = {"method": method, "max_drop": max_drop, "control_s": round(seconds, 1),
                       "float_groups": [g.name for g in ctl.float_groups],
                       "float_macs_share": round(sum(groups[g.name].macs_share for g in ctl.float_groups), 4),
                       "drop_points": drops(ctl.model), "all_int8_drop_points": drops(all_int8),
                       "images_per_s_batch8": round(rate, 2), "all_int8_images_per_s_batch8": round(all_rate, 2),
                       "vs_onnxruntime_fp32": round(rate / fp32_rate, 3), "vs_torch_fp32": round(rate / torch_rate, 3),
                       "steps": ctl.steps}
                result["control"].append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "steps"}), flush=True)
    (Path(os.environ.get("OUT", ".")) / "int8_control_cpu.json").write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
