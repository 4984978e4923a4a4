"""Where batch 1's time goes: the model vs the post-processing (top-k sort, NMS, boxes back to source pixels).

The latency objective's compiled engine runs a batch-1 step (model + post-processing, one CUDA graph) in 0.68 ms on
the H100, against the brief's 0.52 ms for the compiled model alone. For each engine in COMPILES (default
"none,inductor-untuned,inductor"), on a real photo, this measures one step replayed back to back, the model alone
and the post-processing alone (each its own graph), the post-processing with other top-k caps, and lists the
post-processing's kernels (torch.profiler, device time). Writes b1_latency.json under $OUT.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, photo_sources  # noqa: E402

from yolotune import Detector  # noqa: E402
from yolotune.engine.cuda_graph import CudaGraphCache  # noqa: E402
from yolotune.ops.postprocess import postprocess  # noqa: E402


def replay_ms(fn, *tensors, seconds: float = 0.3) -> float:
    """Median of 5 windows of back-to-back replays of ``fn``'s graph, ms per replay."""
    graphs = CudaGraphCache(fn)
    graphs(*tensors)
    torch.cuda.synchronize()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < 0.05:
        graphs(*tensors)
        n += 1
    torch.cuda.synchronize()
    per = (time.perf_counter() - t0) / n
    inner = max(10, int(seconds / per / 5))
    samples = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(inner):
            graphs(*tensors)
        torch.cuda.synchronize()
        samples.append((time.perf_counter() - t0) / inner * 1e3)
    return sorted(samples)[2]


def kernels(fn, *tensors, top: int = 25) -> list[dict]:
    """Device time per kernel of one eager call (averaged over 20)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        for _ in range(3):
            fn(*tensors)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(20):
                fn(*tensors)
            torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if us:
            rows.append({"kernel": e.key[:120], "calls_per_step": e.count / 20, "us_per_step": round(us / 20, 2)})
    rows.sort(key=lambda r: -r["us_per_step"])
    return rows[:top]


def main() -> None:
    out = Path(os.environ.get("OUT") or tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    photo = torch.from_numpy(photo_sources()[0]).permute(2, 0, 1)[None].float().cuda() / 255
    result: dict = {"env": environment(), "engines": []}
    for compile in os.environ.get("COMPILES", "none,inductor-untuned,inductor").split(","):
        t0 = time.perf_counter()
        opts = {} if compile == "none" else {"compile": compile}
        with Detector("default", device="cuda", batch=1, precision="fp16", **opts) as det:
            h, w = det.imgsz
            x = torch.nn.functional.interpolate(photo, size=(h, w), mode="bilinear").to(det.engine.input_dtype)
            if det.engine.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            g = torch.tensor([[1.0, 1.0, 0.0, 0.0, float(h), float(w)]], device="cuda")
            with torch.inference_mode():
                raw = det.engine(x).clone()
            row = {"compile": compile, "ready_s": round(time.perf_counter() - t0, 1),
                   "candidates_over_conf": int((raw.float()[:, 4:].amax(1) > det.post.conf).sum()),
                   "step_ms": replay_ms(det._detect_step, x, g),
                   "model_ms": replay_ms(lambda t: (det.engine(t),), x),
                   "post_ms": replay_ms(lambda r, gg: postprocess(r, gg, det.post), raw, g)}
            for k in (1024, 512, 300):
                cfg = dataclasses.replace(det.post, topk=k)
                row[f"post_ms_topk{k}"] = replay_ms(lambda r, gg, c=cfg: postprocess(r, gg, c), raw, g)
            row["post_kernels"] = kernels(lambda r, gg: postprocess(r, gg, det.post), raw, g)
            row["model_kernels"] = kernels(lambda t: det.engine(t), x, top=12)
        result["engines"].append(row)
        print(json.dumps({k: v for k, v in row.items() if not k.endswith("kernels")}), flush=True)
        print(json.dumps(row["post_kernels"][:12]), flush=True)
        (out / "b1_latency.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
