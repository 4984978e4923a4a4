"""Many streams through `StreamRuntime`, side by side with one Ultralytics predict(stream=True)
loop per source in threads, in one process on one device.

For each model and stream count: real-time looped file streams (a camera's pacing) for SECONDS; a count holds when
no stream lags its clock by a second, nothing drops, and p99 latency (decode end -> result) <= LATENCY_MS. Then the
same streams as fast as they go (throughput), ours vs Ultralytics' per-source loops. Finally `plan` predicts and
verifies. Environment: STREAMS (e.g. 50,100,150), RES (1280x720), FPS (30), RUN_SECONDS (20), LATENCY_MS (50),
MODELS (yolov8n,yolov8m), BATCH (64), COMPILE (inductor on CUDA; none for the CUDA graph alone), PEER (1 runs Ultralytics), PEER_STREAMS (16,32 on CUDA; ours is also measured there), DECODER_PROCS (decoder processes; default cores - 2). Writes serve_bench.json.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, run_seconds  # noqa: E402

import torch  # noqa: E402

from yolotune import Detector, load_model  # noqa: E402
from yolotune.serve.plan import _verify, plan, plan_clip  # noqa: E402
from yolotune.serve.runtime import RunOptions, StreamRuntime  # noqa: E402
from yolotune.io.stream_specs import SourceSpec  # noqa: E402

CUDA = torch.cuda.is_available()
W, H = (int(v) for v in os.environ.get("RES", "1280x720" if CUDA else "640x360").split("x"))
FPS = float(os.environ.get("FPS", "30" if CUDA else "10"))
SECONDS = run_seconds("20" if CUDA else "30")
LATENCY_MS = float(os.environ.get("LATENCY_MS", "50" if CUDA else "1000"))
STREAMS = [int(n) for n in os.environ.get("STREAMS", "50,100,150" if CUDA else "4").split(",")]
BATCH = int(os.environ.get("BATCH", "64" if CUDA else "4"))
PEER = os.environ.get("PEER", "1") == "1"
# 100 Ultralytics model copies in threads produced no frame within 120 s on the H100: the peer runs fewer streams
PEER_STREAMS = [int(n) for n in os.environ.get("PEER_STREAMS", "16,32" if CUDA else ",".join(map(str, STREAMS))).split(",")]
DECODER_PROCS = int(os.environ["DECODER_PROCS"]) if os.environ.get("DECODER_PROCS") else None  # default: cores - 2
SWITCH_MS = [float(v) for v in os.environ.get("SWITCH_MS", "5").split(",")]  # e.g. 5,1 to compare
PIXEL_FORMATS = os.environ.get("PIXEL_FORMATS", "auto").split(",")  # e.g. yuv420p,rgb24 to compare both


def throughput(det, clip: Path, n: int, seconds: float, pixel_format: str = "auto") -> dict:
    """n looped streams read as fast as they decode: frames/s in total and for the slowest stream."""
    specs = [SourceSpec(str(clip), "file", f"t{i:03d}", loop=True) for i in range(n)]
    getattr(det, "timings", {}).clear()  # the Detector's stage timings of this run only
    s = StreamRuntime(det, specs, RunOptions(out=None, max_batch=BATCH, max_wait_ms=5, queue_size=4, duration_s=seconds,
                                             pixel_format=pixel_format, decoder_processes=DECODER_PROCS)).run().to_dict()
    rates = [st["steady_fps"] for st in s["streams"]]  # since each stream's first result: start-up excluded
    return {"streams": n, "total_fps": sum(rates), "min_stream_fps": min(rates), "mean_batch": s["mean_batch"],
            "pixel_format": s["pixel_format"], "decoders": s["decoders"], "engine_thread_s": s["engine_thread_s"],
            "warmup_s": s["warmup_s"],
            "detector_stages_s": {k: round(v.seconds, 3)
                                  for k, v in getattr(det, "timings", {}).items()}}


def ultralytics_loops(model_file: str, clip: Path, n: int, seconds: float) -> dict:
    """One YOLO model and one predict(stream=True) loop per source, each in a thread (what users write). Counted
    over ``seconds`` once every loop has produced its first result (model loading and warm-up excluded)."""
    from ultralytics import YOLO

    models = [YOLO(model_file) for _ in range(n)]
    counts = [0] * n
    stop = threading.Event()

    def loop(i: int) -> None:
        while not stop.is_set():
            for _ in models[i].predict(source=str(clip), stream=True, half=CUDA, device=0 if CUDA else "cpu", verbose=False):
                counts[i] += 1
                if stop.is_set():
                    return

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.perf_counter() + 120
    while min(counts) == 0 and time.perf_counter() < deadline:
        time.sleep(0.1)
    before, t0 = list(counts), time.perf_counter()
    time.sleep(seconds)
    after, wall = list(counts), time.perf_counter() - t0
    stop.set()
    for t in threads:
        t.join(timeout=10)
    rates = [(a - b) / wall for a, b in zip(after, before)]
    return {"streams": n, "total_fps": sum(rates), "min_stream_fps": min(rates), "warm_streams": sum(c > 0 for c in before)}


def main() -> None:
    out = Path(os.environ.get("OUT") or tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    clip = plan_clip(work, W, H, FPS)
    rows: dict = {"env": environment(), "resolution": [W, H], "fps": FPS, "seconds": SECONDS, "latency_ms": LATENCY_MS,
                  "batch": BATCH, "models": {}}
    m_pt = work / "yolov8m.pt"
    wanted = os.environ.get("MODELS", "yolov8n,yolov8m" if CUDA else "yolov8n").split(",")
    files = {"yolov8n": "default"} if "yolov8n" in wanted else {}
    if "yolov8m" in wanted:
        from yolotune.models.ultralytics import save_ultralytics_checkpoint

        save_ultralytics_checkpoint(load_model("yolov8m.yaml", seed=0, class_bias=-2.0), m_pt)
        files["yolov8m"] = str(m_pt)
    for name, model in files.items():
        opts = {"compile": os.environ.get("COMPILE", "inductor")} if CUDA and os.environ.get("COMPILE", "inductor") != "none" else {}
        r: dict = {"realtime": [], "throughput": [], "peer": []}
        with Detector(model, device="cuda" if CUDA else "cpu", batch=BATCH, **opts) as det:
            for pf in PIXEL_FORMATS:
                for n in STREAMS:
                    for switch_ms in SWITCH_MS:  # the interpreter's thread switch interval (default 5 ms)
                        sys.setswitchinterval(switch_ms / 1e3)
                        v = _verify(det, clip, n, FPS, SECONDS, 4, None, BATCH, LATENCY_MS, pixel_format=pf,
                                    decoder_processes=DECODER_PROCS)
                        v["switch_interval_ms"] = switch_ms
                        r["realtime"].append(v)
                        print(name, json.dumps(v), flush=True)
                    sys.setswitchinterval(0.005)
            held = [v["streams"] for v in r["realtime"] if v["holds"]]
            r["largest_holding"] = max(held) if held else 0
            for pf in PIXEL_FORMATS:
                for n in sorted(set(STREAMS) | (set(PEER_STREAMS) if PEER else set())):
                    r["throughput"].append(throughput(det, clip, n, min(SECONDS, 15), pf))
                    print(name, "throughput", json.dumps(r["throughput"][-1]), flush=True)
            r["plan"] = plan(det, FPS, (W, H), verify=True, verify_seconds=min(SECONDS, 15), latency_budget_ms=LATENCY_MS).to_dict()
            r["plan"].pop("sweep", None)
            print(name, "plan", json.dumps({k: r["plan"].get(k) for k in ("limits", "binding", "predicted_streams", "verified_streams",
                                                                       "host_pipeline_fps", "host_pipeline_errors")}), flush=True)
        if PEER:
            from yolotune.assets import resolve

            for n in PEER_STREAMS:
                try:
                    p = ultralytics_loops(str(resolve(model) or model), clip, n, min(SECONDS, 15))
                except Exception as e:  # noqa: BLE001  (the peer may run out of memory with many model copies)
                    p = {"streams": n, "error": f"{type(e).__name__}: {e}"}
                r["peer"].append(p)
                print(name, "ultralytics", json.dumps(p), flush=True)
            for ours in r["throughput"]:
                peer = next((p for p in r["peer"] if p["streams"] == ours["streams"] and "total_fps" in p), None)
                if peer:
                    ours["vs_ultralytics"] = ours["total_fps"] / peer["total_fps"]
        rows["models"][name] = r
        (out / "serve_bench.json").write_text(json.dumps(rows, indent=1, default=str))
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk in ("largest_holding",)} for k, v in rows["models"].items()}))


if __name__ == "__main__":
    main()
