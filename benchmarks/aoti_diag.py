"""Where does loading/running an AOTInductor package of the default model crash on CUDA? Each condition runs in its
own process (a segfault ends only that one); writes aoti_diag.json under $OUT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PRELUDE = r"""
import sys, time, torch
from yolotune import Detector
from yolotune.engine.aoti import export_program
det = Detector("default", device="cuda", batch=8, rect=False, cuda_graph=False)
m = det.engine.module
h, w = det.imgsz
x = torch.zeros(4, 3, h, w, device="cuda", dtype=det.engine.input_dtype).contiguous(memory_format=torch.channels_last)
pkg = sys.argv[1]
from torch._inductor import aoti_compile_and_package, aoti_load_package
def say(*a): print(*a, flush=True)
"""

CASES = {
    "build": """
t = time.perf_counter()
prog = export_program(m, x)
say("exported", time.perf_counter() - t)
aoti_compile_and_package(prog, package_path=pkg)
say("built", time.perf_counter() - t)
""",
    "load_plain": """
t = time.perf_counter(); fn = aoti_load_package(pkg); say("loaded", time.perf_counter() - t)
y = fn(x); torch.cuda.synchronize(); say("ran", tuple(y.shape), float((y.float() - m(x).float()).abs().max()))
""",
    "load_inference_mode": """
with torch.inference_mode():
    fn = aoti_load_package(pkg); say("loaded")
    y = fn(x); torch.cuda.synchronize(); say("ran", tuple(y.shape))
""",
    "load_side_stream": """
s = torch.cuda.Stream()
with torch.inference_mode(), torch.cuda.stream(s):
    fn = aoti_load_package(pkg); say("loaded")
    y = fn(x); torch.cuda.synchronize(); say("ran", tuple(y.shape))
""",
    "run_side_stream_then_graph": """
fn = aoti_load_package(pkg); say("loaded")
s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
with torch.inference_mode(), torch.cuda.stream(s):
    for _ in range(3): fn(x)
torch.cuda.current_stream().wait_stream(s); say("warm")
g = torch.cuda.CUDAGraph()
with torch.inference_mode(), torch.cuda.graph(g):
    y = fn(x)
g.replay(); torch.cuda.synchronize(); say("graph replayed", tuple(y.shape))
""",
    "load_after_compile_workers": """
import torch._inductor.async_compile  # the compile worker pool a build in this process starts
fn = aoti_load_package(pkg, run_single_threaded=False); say("loaded")
y = fn(x); torch.cuda.synchronize(); say("ran")
""",
    "detector_aoti": """
import os
os.environ["YOLOTUNE_ENGINE_CACHE"] = str(__import__("pathlib").Path(pkg).parent / "cache")
import numpy as np
with Detector("default", device="cuda", batch=8, compile="aoti") as d:
    r = d.detect([np.zeros((720, 1280, 3), np.uint8)] * 3); say("detector ran", len(r), d.engine.aoti.last_build)
""",
}

TORCH_ONLY = r"""
import sys, time, torch
def say(*a): print(*a, flush=True)
pkg = sys.argv[1]
from torch._inductor import aoti_compile_and_package, aoti_load_package
"""

TORCH_ONLY_CASES = {
    "torch_only_load_yolo_package": """
x = torch.zeros(4, 3, 640, 640, device="cuda", dtype=torch.half).contiguous(memory_format=torch.channels_last)
fn = aoti_load_package(pkg); say("loaded"); y = fn(x); torch.cuda.synchronize(); say("ran", tuple(y.shape))
""",
    "torch_only_load_single_threaded": """
x = torch.zeros(4, 3, 640, 640, device="cuda", dtype=torch.half).contiguous(memory_format=torch.channels_last)
fn = aoti_load_package(pkg, run_single_threaded=True); say("loaded"); y = fn(x); torch.cuda.synchronize(); say("ran")
""",
    "tiny_conv_build_and_load": """
m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.SiLU()).cuda().half().eval()
x = torch.zeros(2, 3, 64, 64, device="cuda", dtype=torch.half)
p = pkg + ".tiny.pt2"
with torch.no_grad():
    prog = torch.export.export(m, (x,), dynamic_shapes=({0: torch.export.Dim("b", min=1, max=64)},))
    aoti_compile_and_package(prog, package_path=p); say("built")
    fn = aoti_load_package(p); say("loaded"); y = fn(x); torch.cuda.synchronize(); say("ran", tuple(y.shape))
""",
    "tiny_conv_legacy_so": """
m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.SiLU()).cuda().half().eval()
x = torch.zeros(2, 3, 64, 64, device="cuda", dtype=torch.half)
with torch.no_grad():
    so = torch._inductor.aot_compile(m, (x,)); say("built", so)
    fn = torch._export.aot_load(so, "cuda"); say("loaded"); y = fn(x); torch.cuda.synchronize(); say("ran", tuple(y.shape))
""",
}


def main() -> None:
    out = Path(os.environ.get("OUT") or tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    pkg = str(Path(tempfile.mkdtemp(prefix="aoti-diag-")) / "m.pt2")
    rows = {}
    only = os.environ.get("DIAG_ONLY")
    cases = {k: PRELUDE + v for k, v in CASES.items()} | {k: TORCH_ONLY + v for k, v in TORCH_ONLY_CASES.items()}
    for name, body in cases.items():
        if only and name not in only.split(","):
            continue
        r = subprocess.run([sys.executable, "-X", "faulthandler", "-c", body, pkg], capture_output=True,
                           text=True, timeout=400)
        rows[name] = {"rc": r.returncode, "stdout": r.stdout[-1500:], "stderr": r.stderr[-2500:]}
        print(name, r.returncode, r.stdout.strip()[-400:], flush=True)
        if r.returncode:
            print(r.stderr[-1800:], flush=True)
        (out / "aoti_diag.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
