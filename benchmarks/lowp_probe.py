"""Low precision on Hopper: do FP8 or INT8 matrix units make yolov8n faster than FP16?

YOLO is convolutions; the ones that are plain matrix products are the 1x1 (pointwise) convolutions: [B*H*W, Cin] x
[Cin, Cout] in channels-last memory. This probe replaces each of them (Cin, Cout multiples of 16) in the fused
FP16 model with
- FP8: activations quantized per row (dynamic amax), weights per output channel, ``torch._scaled_mm`` (e4m3);
- INT8: the same with int8 and ``torch._int_mm`` (int32 accumulate), then rescaled;
and measures model + NMS throughput at batch 64 (CUDA graph, and torch.compile + graph, which can fuse the
quantization into neighbouring kernels) and mAP50-95 on generated scenes, side by side with plain FP16, in one
process. The 3x3 convolutions (most of the FLOPs) stay FP16: cuDNN has no FP8 convolution here, and no TensorRT.
Writes lowp_probe.json under $OUT. ``python benchmarks/lowp_probe.py check`` verifies the replacements on the CPU.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

FP8_MAX = 448.0  # e4m3


class PointwiseLowp(torch.nn.Module):
    """A 1x1, stride-1, ungrouped Conv2d as a quantized matrix product (FP8 or INT8)."""

    def __init__(self, conv: torch.nn.Conv2d, mode: str):
        super().__init__()
        self.mode = mode
        w = conv.weight.detach().float().reshape(conv.out_channels, conv.in_channels)
        qmax = FP8_MAX if mode == "fp8" else 127.0
        scale = (w.abs().amax(dim=1, keepdim=True) / qmax).clamp(min=1e-12)  # per output channel
        q = (w / scale)
        q = q.to(torch.float8_e4m3fn) if mode == "fp8" else q.round().clamp(-127, 127).to(torch.int8)
        self.register_buffer("wq_t", q.t())  # [Cin, Cout], column-major as _scaled_mm wants
        self.register_buffer("w_scale", scale.t().contiguous())  # [1, Cout]
        self.register_buffer("bias", conv.bias.detach().float() if conv.bias is not None else torch.zeros(conv.out_channels))
        self.cout = conv.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        a = x.permute(0, 2, 3, 1).reshape(-1, c).float()  # channels-last input: a view, rows are pixels
        qmax = FP8_MAX if self.mode == "fp8" else 127.0
        a_scale = (a.abs().amax(dim=1, keepdim=True) / qmax).clamp(min=1e-12)
        if self.mode == "fp8":
            aq = (a / a_scale).to(torch.float8_e4m3fn)
            y = torch._scaled_mm(aq, self.wq_t, scale_a=a_scale, scale_b=self.w_scale, out_dtype=torch.bfloat16).float()
        else:
            aq = (a / a_scale).round().clamp(-127, 127).to(torch.int8)
            y = torch._int_mm(aq, self.wq_t).float() * a_scale * self.w_scale
        y = (y + self.bias).to(x.dtype)
        return y.reshape(b, h, w, self.cout).permute(0, 3, 1, 2)  # back to NCHW shape, channels-last memory


def replace_pointwise(module: torch.nn.Module, mode: str) -> int:
    n = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if (isinstance(child, torch.nn.Conv2d) and child.kernel_size == (1, 1) and child.stride == (1, 1)
                    and child.groups == 1 and child.in_channels % 16 == 0 and child.out_channels % 16 == 0):
                setattr(parent, name, PointwiseLowp(child, mode).to(child.weight.device))
                n += 1
    return n


def check_cpu() -> dict:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(64, 32, 1).eval()
    x = torch.randn(2, 64, 20, 20).contiguous(memory_format=torch.channels_last)
    ref = conv(x)
    out = {}
    for mode in ("fp8", "int8"):
        try:
            y = PointwiseLowp(conv, mode)(x)
            out[mode] = float(((y - ref).norm() / ref.norm()).item())
        except Exception as e:  # noqa: BLE001  (a CPU build without the kernel)
            out[mode] = f"{type(e).__name__}: {e}"
    return out


def main() -> None:
    if sys.argv[1:] == ["check"]:
        print(json.dumps(check_cpu()))
        return
    from common import environment

    from yolotune import Detector
    from yolotune.data.synth import write_dataset
    from yolotune.data.validate import validate
    from yolotune.profile.sweep import measure_batch

    out = Path(os.environ.get("OUT") or tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    val = write_dataset(Path(tempfile.mkdtemp()) / "val", 200, seed=101, workers=os.cpu_count())
    rows = {"env": environment(), "check_cpu_relative_error": check_cpu(), "variants": []}
    for compile_mode in (False, "inductor"):
        for mode in ("fp16", "fp8", "int8"):
            name = f"{mode} pointwise" + (" + torch.compile" if compile_mode else "") + ", CUDA graph"
            row = {"name": name}
            try:
                with Detector("default", device="cuda", batch=64, precision="fp16", conf=0.001, rect=False,
                              compile=compile_mode) as det:
                    if mode != "fp16":
                        row["replaced"] = replace_pointwise(det.engine.module, mode)
                    h, w = det.imgsz
                    p = measure_batch(det, 64, h, w, repeats=5, min_seconds=0.3)
                    row.update(images_per_s=p.images_per_s, ms_per_batch=p.latency_ms,
                               map50_95=validate(det, val).map50_95)
            except Exception as e:  # noqa: BLE001  (report what failed, go on)
                row["error"] = f"{type(e).__name__}: {str(e)[:400]}"
            rows["variants"].append(row)
            print(json.dumps(row), flush=True)
            (out / "lowp_probe.json").write_text(json.dumps(rows, indent=1, default=str))
    base = {v["name"].split(" ", 1)[1]: v for v in rows["variants"] if v["name"].startswith("fp16") and "images_per_s" in v}
    for v in rows["variants"]:
        ref = base.get(v["name"].split(" ", 1)[1])
        if ref and "images_per_s" in v:
            v["vs_fp16"] = v["images_per_s"] / ref["images_per_s"]
            v["drop_points"] = (ref["map50_95"] - v["map50_95"]) * 100
    (out / "lowp_probe.json").write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
