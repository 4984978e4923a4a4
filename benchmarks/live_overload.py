"""Live overload vs files, side by side in one process on one device: N 720p30 streams of a camera-like clip
(``write_video(camera=True)``: sensor noise, a pan, H.264, a keyframe a second, no B-frames, 3 Mbit/s; the runs of
2026-12-01 used a pan over a photograph without objects, encoded the same way) through one Detector, as

- files: the clip looped from disk (decoders wait for the pipeline: frames/s = what the pipeline processes at capacity);
- files beside the servers: the same, while another process reads the live streams and throws them away (the
  servers' own cost on this machine, which a real camera wall does not put on it: the control for "live");
- live: the same clip served as live MPEG-TS over HTTP on 127.0.0.1 (tests/live_server.py, real time), decoded on
  demand (yolotune's default);
- live, decode all: the same live streams with every frame decoded and then dropped (on_demand=False: the behaviour
  before decode-on-demand), when DECODE_ALL=1.

The server stands in for cameras elsewhere: it runs at niceness 19, on CPU time the pipeline leaves (on 2 cores at
niceness 0 it took 0.16-0.19 of a core from the engine). Modes alternate REPEATS times; the medians are compared.
Target: live processed frames/s >= 90% of files when the load is past capacity (of what the cameras send, when it is
not: ``live_vs_bound``). Usage:
    STREAMS=16 RUN_SECONDS=40 DEVICE=cpu BATCH=16 REPEATS=2 DECODE_ALL=1 python benchmarks/live_overload.py
Writes live_overload_<device>.json under $OUT (default benchmarks/results/serve).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))  # the live server the tests use

from common import environment, run_seconds  # noqa: E402

from yolotune.data.synth import write_video  # noqa: E402


def run(detector, specs, seconds: float, batch: int, on_demand: bool = True) -> dict:
    from yolotune.serve.runtime import RunOptions, StreamRuntime

    rt = StreamRuntime(detector, specs, RunOptions(out=None, max_batch=batch, duration_s=seconds, queue_size=8,
                                                   open_timeout_s=20, read_timeout_s=20, on_demand=on_demand))
    timeline = []  # (seconds since start, frames dropped so far): drops of the start-up apart from the steady ones
    s = rt.run(on_tick=lambda r: timeline.append((time.perf_counter() - r.started,
                                                  sum(q.dropped + w.status.dropped for q, w in zip(r.queues, r.workers))))).to_dict()
    warm = next((d for t, d in timeline if t >= seconds / 4), 0)
    rates = [st["steady_fps"] for st in s["streams"]]
    return {"streams": len(specs), "seconds": s["seconds"], "processed": s["frames"], "processed_fps": s["fps"],
            "steady_fps_total": float(sum(rates)), "dropped": s["dropped"],
            "dropped_before_decode": sum(st["dropped_before_decode"] for st in s["streams"]),
            "dropped_per_stream": [st["dropped"] for st in s["streams"]],
            "dropped_after_first_quarter": s["dropped"] - warm,
            "received": sum(st["received"] for st in s["streams"]),
            "latency_p50_ms": s["latency_p50_ms"], "latency_p99_ms": s["latency_p99_ms"],
            "max_lag_s": max(st["max_lag_s"] for st in s["streams"]), "mean_batch": s["mean_batch"],
            "failed": s["failed"], "decoders": s["decoders"], "host_rss_mib": s["host_rss_mib"]}


def main() -> None:
    from yolotune import Detector
    from yolotune.io.stream_specs import SourceSpec

    import live_server

    counts = [int(n) for n in os.environ.get("STREAMS", "16").split(",")]
    seconds = run_seconds("40")
    device = os.environ.get("DEVICE", "auto")
    batch = int(os.environ.get("BATCH", "16"))
    decode_all = os.environ.get("DECODE_ALL", "0") == "1"
    repeats = int(os.environ.get("REPEATS", "2"))
    servers_per = int(os.environ.get("STREAMS_PER_SERVER", "50"))  # one server process per 50 streams
    out = Path(os.environ.get("OUT", Path(__file__).parent / "results" / "serve"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="live-overload-"))
    t0 = time.perf_counter()
    # a camera's stream: sensor noise, a pan, a keyframe a second, no B-frames, 3 Mbit/s at 720p30 (data/synth.py)
    clip = write_video(work / "camera.mp4", frames=150, size=(720, 1280), fps=30, camera=True)
    print(f"clip: {clip.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    with Detector("default", device=device, batch=batch) as det:
        name = "cpu" if det.device.type == "cpu" else "gpu"
        for n in counts:
            ports = live_server.free_ports(n)
            procs = [live_server.start(clip, ports[k:k + servers_per], nice=19) for k in range(0, n, servers_per)]
            modes = {"files": [SourceSpec(str(clip), "file", f"f{i:03d}", loop=True) for i in range(n)],
                     "live": [SourceSpec(f"http://127.0.0.1:{p}/cam", "url", f"l{i:03d}") for i, p in enumerate(ports)]}
            runs: dict[str, list] = {"files": [], "files_beside_servers": [], "live": []}
            if decode_all:
                runs["live_decode_all"] = []
            try:
                time.sleep(3)  # the servers are up
                for _ in range(repeats):
                    for mode in runs:
                        specs = modes["files" if mode.startswith("files") else "live"]
                        drainer = live_server.drain(ports) if mode == "files_beside_servers" else None
                        try:
                            runs[mode].append(run(det, specs, seconds, batch, on_demand=mode != "live_decode_all"))
                        finally:
                            if drainer is not None:
                                drainer.terminate()
                        print(n, mode, round(runs[mode][-1]["steady_fps_total"], 2), flush=True)
            finally:
                for p in procs:
                    p.terminate()
            median = {m: float(np.median([r["steady_fps_total"] for r in rs])) for m, rs in runs.items()}
            # what live can process at most: the pipeline's capacity (files), or what the cameras send when less
            offered = 30.0 * n
            bound = min(median["files"], offered)
            row = {"streams": n, "runs": runs, "median_fps": median, "offered_fps": offered,
                   "overloaded": median["files"] < offered, "live_vs_bound": median["live"] / max(bound, 1e-9),
                   "live_vs_files": median["live"] / max(median["files"], 1e-9),
                   "live_vs_files_beside_servers": median["live"] / max(min(median["files_beside_servers"], offered), 1e-9)}
            if decode_all:
                row["decode_all_vs_bound"] = median["live_decode_all"] / max(bound, 1e-9)
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "runs"}), flush=True)
    result = {"benchmark": "live_overload", "device": str(det.device), "environment": environment(),
              "clip": {"size": [1280, 720], "fps": 30, "gop": 30, "bframes": 0, "bytes": clip.stat().st_size},
              "seconds": seconds, "batch": batch, "repeats": repeats, "rows": rows, "date": time.strftime("%Y-%m-%d"),
              "command": f"STREAMS={','.join(map(str, counts))} RUN_SECONDS={seconds:g} DEVICE={device} BATCH={batch} "
                         f"REPEATS={repeats} DECODE_ALL={int(decode_all)} python benchmarks/live_overload.py"}
    (out / f"live_overload_{name}.json").write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
