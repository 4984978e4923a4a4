"""What a fresh process spends before its first detections from an optimize artifact, step by step.

Two artifacts of the default model: "graph" (FP16 CUDA graph, batch 64: what optimize chose within 120 s) and
"compiled" (torch.compile + graph, batch 128). Each is loaded in fresh processes: the first fills the artifact's
caches (a compile for "compiled"), the next ones are what a deployment sees. Steps timed in the child: import
torch, CUDA context, import yolotune, import ultralytics, Detector(artifact), first detect (graph capture, cuDNN
autotuning, compile-cache lookups), second detect; some rows then time model + NMS at the artifact's batch (what
cuDNN autotuning buys). ARTS=graph,compiled picks (also compiled-untuned, compiled-b1: the latency objective's). Children may write bytecode (RELOAD_NO_PYC=1: none, as on a
machine whose environment sets PYTHONDONTWRITEBYTECODE). Writes $OUT/reload_diag.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CHILD = r"""
import json, sys, time
t = {}; t0 = time.perf_counter(); last = [t0]
def mark(k):
    now = time.perf_counter(); t[k] = round(now - last[0], 3); last[0] = now
import numpy as np, torch
mark("import torch")
torch.zeros(1, device="cuda"); torch.cuda.synchronize()
mark("CUDA context")
import yolotune
from yolotune import Detector
mark("import yolotune")
import ultralytics.nn.tasks
mark("import ultralytics")
import cProfile, io, os, pstats
prof = cProfile.Profile() if os.environ.get("RELOAD_PROFILE") else None
prof and prof.enable()
if os.environ.get("CUDNN_LIMIT"):  # how many algorithms cuDNN's autotuner tries per convolution (torch's default 10)
    torch.backends.cudnn.benchmark_limit = int(os.environ["CUDNN_LIMIT"])
d = Detector(sys.argv[1], **json.loads(sys.argv[2]))
mark("Detector(artifact)")
frames = [np.zeros((720, 1280, 3), np.uint8)] * min(d.batch, 4)
d.detect(frames)
mark("first detect")
if os.environ.get("FULL_BATCH"):  # what a throughput deployment waits for: its first full batch
    d.detect([frames[0]] * d.batch)
    mark("first full batch")
if prof:
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(45)
    t["profile"] = buf.getvalue()[-9000:]
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(30)
    t["profile, own time"] = buf.getvalue()[-7000:]
d.detect(frames)
mark("second detect")
t["to first detections"] = round(sum(v for k, v in t.items()
                                    if k not in ("second detect", "first full batch") and not k.startswith("profile")), 3)
if "first full batch" in t:
    t["Detector(artifact) to first full batch"] = round(t["Detector(artifact)"] + t["first detect"] + t["first full batch"], 3)
t["warm_started"] = getattr(d, "warm_started", None)
if os.environ.get("RELOAD_THROUGHPUT"):  # model + NMS at the artifact's batch: what the start-up choices cost later
    from yolotune.profile.sweep import measure_batch
    p = measure_batch(d, d.batch, *d.imgsz, repeats=5, min_seconds=0.3)
    t["images/s at batch %d" % d.batch] = round(p.images_per_s)
e = d.engine
t["precompiled"] = getattr(getattr(e, "precompiled", None), "loads", None)
t["precompile_error"] = getattr(e, "precompile_error", None)
print(json.dumps(t))
"""


# Where torch has no cached bytecode and the environment sets PYTHONDONTWRITEBYTECODE (profiled: ~7 s
# of each fresh process went to compiling the sources of ~1,500 modules that torch.compile's machinery imports). An
# installed package keeps its .pyc files, so the children may write theirs, here; the first (cold) run fills it.
PYCACHE = {"PYTHONPYCACHEPREFIX": os.environ.get("PYTHONPYCACHEPREFIX") or tempfile.mkdtemp(prefix="pycache-")}


def child_env(extra: dict | None) -> dict:
    env = {**os.environ, **PYCACHE, **(extra or {})}
    if not os.environ.get("RELOAD_NO_PYC"):
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def fresh(art: Path, overrides: dict, env: dict | None = None) -> dict:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", CHILD, str(art), json.dumps(overrides)], capture_output=True, text=True,
                       timeout=400, env=child_env(env))
    wall = time.perf_counter() - t0
    if r.returncode:
        return {"error": r.stderr[-800:], "wall_s": round(wall, 2)}
    return {**json.loads(r.stdout.strip().splitlines()[-1]), "wall_s": round(wall, 2)}


def main() -> None:
    from yolotune.assets import resolve
    from yolotune.options import DetectorOptions
    from yolotune.tune.artifact import write_artifact

    out = Path(os.environ.get("OUT") or tempfile.mkdtemp())
    # RELOAD_WORK: a folder kept between calls on a warm machine, so its artifacts' caches are already filled
    work = Path(os.environ.get("RELOAD_WORK") or tempfile.mkdtemp(prefix="reload-diag-"))
    model = resolve("default")
    arts = {
        "graph": write_artifact(work / "graph", model, DetectorOptions(**{"precision": "fp16", "cuda_graph": True, "batch": 64}), {}),
        "compiled": write_artifact(work / "compiled", model, DetectorOptions(**{"precision": "fp16", "cuda_graph": True, "compile": True,
                                                              "rect": False, "batch": 128}), {}),
        # what the default optimize (120 s budget) saves: kernels not tuned
        "compiled-untuned": write_artifact(work / "compiled-untuned", model, DetectorOptions(**{
            "precision": "fp16", "cuda_graph": True, "compile": "inductor-untuned", "rect": False, "batch": 128}), {}),
        # what the batch-1 (latency) objective saves
        "compiled-b1": write_artifact(work / "compiled-b1", model, DetectorOptions(**{
            "precision": "fp16", "cuda_graph": True, "compile": "inductor-untuned", "rect": False, "batch": 1}), {}),
    }
    rows: dict = {}
    wanted = os.environ.get("ARTS", "graph,compiled").split(",")
    for name, art in ((n, a) for n, a in arts.items() if n in wanted):
        tp = {"RELOAD_THROUGHPUT": "1"}
        # PROFILE_FIRST_WARM=1: the first warm process profiled (it has been far slower than the next ones)
        first_warm = {"RELOAD_PROFILE": "1"} if os.environ.get("PROFILE_FIRST_WARM") else {}
        runs = [fresh(art, {}, first_warm if i == 1 else None) for i in range(int(os.environ.get("RUNS", "3")))]
        rows[name] = {"cold (first process)": runs[0], "warm": runs[1:]}
        print(name, json.dumps(rows[name]), flush=True)
        # the cuDNN autotuning share, and what the autotuner buys: warm loads with it on and off, alternating
        for k in range(int(os.environ.get("CUDNN_ROWS", "2"))):
            rows[name][f"warm, cudnn.benchmark on, {k}"] = fresh(art, {}, tp)
            rows[name][f"warm, cudnn.benchmark off, {k}"] = fresh(art, {}, {**tp, "YOLOTUNE_CUDNN_BENCHMARK": "0"})
        # WARM_ROWS: the saved function loading while cuDNN autotunes the full batch (Detector's warm start) vs
        # not, vs autotuning off; CUDNN_LIMITS=1,3: fewer algorithms tried per convolution
        fb = {"FULL_BATCH": "1"}
        for k in range(int(os.environ.get("WARM_ROWS", "0"))):
            rows[name][f"warm start, {k}"] = fresh(art, {}, {**tp, **fb})
            rows[name][f"no warm start, {k}"] = fresh(art, {}, {**tp, **fb, "YOLOTUNE_WARM_START": "0"})
            rows[name][f"warm start, cudnn.benchmark off, {k}"] = fresh(art, {}, {**tp, **fb, "YOLOTUNE_CUDNN_BENCHMARK": "0"})
            for limit in filter(None, os.environ.get("CUDNN_LIMITS", "").split(",")):
                rows[name][f"warm start, cudnn limit {limit}, {k}"] = fresh(art, {}, {**tp, **fb, "CUDNN_LIMIT": limit})
            print(name, json.dumps({r: v.get("Detector(artifact) to first full batch") for r, v in rows[name].items()
                                    if isinstance(v, dict)}), flush=True)
            (out / "reload_diag.json").write_text(json.dumps(rows, indent=1))
        if name == "compiled" and os.environ.get("PROFILED_ROW", "1") == "1":
            rows[name]["warm, profiled"] = fresh(art, {}, {"RELOAD_PROFILE": "1"})
        print(name, json.dumps(rows[name]), flush=True)
        (out / "reload_diag.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
