"""The search space: each candidate is a set of real Detector options (plus, for INT8, a quantized model file)."""

from __future__ import annotations

from dataclasses import dataclass, field

from yolotune.engine.openvino import openvino_available
from yolotune.options import DetectorOptions


@dataclass
class Candidate:
    name: str
    options: DetectorOptions  # what this candidate runs with (precision, cuda_graph, compile, nms, ...)
    engine: str = "torch"  # "torch", "onnxruntime" or "openvino" (the last two run the ONNX export)
    calibration: str | None = None  # INT8 calibration method (ONNX Runtime static quantization)
    est_cost_s: float = 10.0  # rough time to build and measure, for the budget
    reference: bool = False  # the accuracy reference (FP32, plain)
    fallback_for: str | None = None  # tried only when the candidate of this name failed to build or run
    refines: str | None = None  # a variant of this (winning) candidate, one option changed
    result: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "options": self.options.changed(), "engine": self.engine, "calibration": self.calibration,
                **self.result}


# INT8 calibrations in the order they are tried: percentile lost least on the default model (0.69 points), MSE 2.12
# but the least in float under accuracy control, entropy 0.94, minmax 6.56 (benchmarks/results/optimize/
# cpu_default_max_drop_0.5_report.json, int8_control_cpu.json); accuracy control runs before the last two where the
# first ones lost too much
INT8_CALIBRATIONS = ("percentile", "mse", "entropy", "minmax")

# Below this budget the compiled candidate skips tuning its kernels' block sizes: ~20 s less to compile, ~9% slower
# (compile_options_h100.json), so that yolov8n's default 120 s still measures it.
TUNED_COMPILE_BUDGET_S = 180.0


def search_space(device_type: str, compile: bool = True, int8: bool = True, budget_s: float = 120.0) -> list[Candidate]:
    """Engine x precision candidates for ``device_type``, the FP32 reference first."""
    if device_type == "cuda":
        # Most promising first, so the default budget (120 s for yolov8n) still measures the likely winner: the
        # compiled engine (~2x eager at large batches, ~60-85 s to compile), then the CUDA graph; the rest show
        # each lever when the budget allows.
        out = [Candidate("eager fp32", DetectorOptions(precision="fp32", cuda_graph=False), reference=True, est_cost_s=8)]
        if compile:  # torch.compile (inductor, static canvas, dynamic batch) replayed as CUDA graphs, compiled
            # ahead of time and saved (engine/precompiled.py). AOTInductor (compile="aoti") is not searched: its
            # CUDA packages can crash their loader (aoti.py). The cost: one compile (batch 1 is padded to 2), its
            # kernels' first run, validation (benchmarks/results/optimize/h100_default_warm_start.md)
            tuned = budget_s >= TUNED_COMPILE_BUDGET_S
            out.append(Candidate("compiled+graph fp16", DetectorOptions(
                precision="fp16", cuda_graph=True, rect=False, compile="inductor" if tuned else "inductor-untuned"),
                                 est_cost_s=85 if tuned else 65))
        out.append(Candidate("graph fp16", DetectorOptions(precision="fp16", cuda_graph=True), est_cost_s=8))
        out += [
            Candidate("eager fp16", DetectorOptions(precision="fp16", cuda_graph=False), est_cost_s=8),
            Candidate("graph bf16", DetectorOptions(precision="bf16", cuda_graph=True), est_cost_s=8),
            Candidate("graph fp32", DetectorOptions(precision="fp32", cuda_graph=True), est_cost_s=8),
        ]
        return out
    # OpenVINO (the openvino extra) runs the same ONNX files: FP32, and INT8 at the first calibration (the file is
    # shared, so its accuracy is the ONNX Runtime candidate's and only its speed differs)
    openvino = openvino_available()
    out = [
        Candidate("torch fp32", DetectorOptions(precision="fp32"), reference=True, est_cost_s=15),
        Candidate("onnxruntime fp32", DetectorOptions(), engine="onnxruntime", est_cost_s=15),
    ]
    if openvino:
        out.append(Candidate("openvino fp32", DetectorOptions(runtime="openvino"), engine="openvino", est_cost_s=15))
    if int8:
        for m in INT8_CALIBRATIONS:
            out.append(Candidate(f"onnxruntime int8 ({m})", DetectorOptions(), engine="onnxruntime", calibration=m,
                                 est_cost_s=45))
            if openvino and m == INT8_CALIBRATIONS[0]:
                out.append(Candidate(f"openvino int8 ({m})", DetectorOptions(runtime="openvino"), engine="openvino",
                                     calibration=m, est_cost_s=15))
    return out


def refinements(best: Candidate, imgsz: tuple[int, int], stride: int, topk: int = 2048) -> list[Candidate]:
    """Variants of the winning engine, each one option away from it: smaller inputs (about 0.8x and 0.65x per
    side, multiples of the stride: fewer pixels, maybe fewer small objects found) and a smaller top-k cap (fewer
    candidates into NMS). The accuracy guard decides whether any may win."""
    out = []
    h, w = imgsz
    for f in (0.8, 0.65):
        size = max(stride, round(h * f / stride) * stride), max(stride, round(w * f / stride) * stride)
        if size != (h, w):
            out.append(Candidate(f"{best.name} @ {size[0]}x{size[1]}", best.options.replace(imgsz=size),
                                 engine=best.engine, calibration=best.calibration,
                                 est_cost_s=best.result.get("seconds", best.est_cost_s), refines=best.name))
    out.append(Candidate(f"{best.name}, top-k {topk // 4}", best.options.replace(topk=topk // 4), engine=best.engine,
                         calibration=best.calibration, est_cost_s=10.0, refines=best.name))
    return out
