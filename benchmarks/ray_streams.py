"""``run --ray`` against plain ``run``, side by side in one process on one device, and an actor killed mid-run.

1. The same STREAMS looped real-time lossless streams of a RES clip at FPS for SECONDS: through StreamRuntime in this
   process (plain run), then through one stream actor on a local Ray cluster (its records through the controller to
   the driver). Each run is judged as plan judges a verification run (serve/plan.verification_row): held or not,
   slowest stream, lag, p50 / p99 latency, frames/s in all.
2. KILL_STREAMS of those streams over two actors sharing the device; after KILL_AFTER_S one actor is killed (ray.kill,
   as a crash): how long until its streams' frames come from the other actor, and whether any stream lost or repeated
   a frame.
Environment: STREAMS (100 on a GPU, 4 on a CPU), KILL_STREAMS (40 / 4), RES (1280x720 / 320x240), FPS (30 / 10),
RUN_SECONDS (30 / 15), LATENCY_MS (50 / 2000), BATCH (32 / 4). Writes $OUT/ray_streams.json.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Log, environment, run_seconds  # noqa: E402

import torch  # noqa: E402

CUDA = torch.cuda.is_available()
W, H = (int(v) for v in os.environ.get("RES", "1280x720" if CUDA else "320x240").split("x"))
FPS = float(os.environ.get("FPS", "30" if CUDA else "10"))
SECONDS = run_seconds("30" if CUDA else "15")
LATENCY_MS = float(os.environ.get("LATENCY_MS", "50" if CUDA else "2000"))
STREAMS = int(os.environ.get("STREAMS", "100" if CUDA else "4"))
KILL_STREAMS = int(os.environ.get("KILL_STREAMS", "40" if CUDA else "4"))
KILL_AFTER_S = float(os.environ.get("KILL_AFTER_S", "10"))
BATCH = int(os.environ.get("BATCH", "32" if CUDA else "4"))


def main() -> None:
    import ray

    from yolotune import Detector
    from yolotune.io.stream_specs import SourceSpec
    from yolotune.scale.run import ClusterOptions, run_on_ray
    from yolotune.serve.plan import _verify, plan_clip, verification_row
    from yolotune.serve.runtime import RunOptions

    log = Log("ray_streams")
    work = Path(tempfile.mkdtemp(prefix="ray-streams-"))
    clip = plan_clip(work, W, H, FPS)
    device = "cuda" if CUDA else "cpu"
    overrides = {"device": device, "batch": BATCH}
    wait = min(LATENCY_MS / 4, 1e3 / FPS)  # as plan's verification waits to fill a batch
    with Detector("default", **overrides) as det:
        plain = _verify(det, clip, STREAMS, FPS, SECONDS, 4, wait, BATCH, LATENCY_MS)
    log.emit(section="plain_run", **{k: v for k, v in plain.items() if k != "host_rss_mib"})

    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    log.emit(section="ray_start", seconds=round(time.perf_counter() - t0, 2))
    specs = lambda n: [SourceSpec(str(clip), "file", f"s{i:03d}", loop=True, realtime=True, lossless=True)  # noqa: E731
                       for i in range(n)]
    options = RunOptions(out=None, max_batch=BATCH, max_wait_ms=wait, queue_size=4, duration_s=SECONDS)
    summary = run_on_ray("default", specs(STREAMS), options, overrides,
                         ClusterOptions(actors=1, capacity={"frames_per_s": 1e6}))
    on_ray = verification_row(summary, STREAMS, FPS, SECONDS, LATENCY_MS)
    log.emit(section="ray_run_1_actor", **{**on_ray, "warmup_s": summary.warmup_s})

    killed: dict = {}
    frames: dict[str, list[int]] = {}

    def watch(update: dict) -> None:
        now = time.perf_counter()
        for name, row in update["records"]:
            if "frame" in row:
                frames.setdefault(name, []).append(row["frame"])
                if killed and name in killed["streams"] and "resumed_after_s" not in killed:
                    if frames[name][-1] > killed["last"].get(name, -1) and now > killed["at"] + 0.05:
                        killed["resumed_after_s"] = round(now - killed["at"], 2)
            elif row.get("event") == "moved" and killed and "moved_after_s" not in killed:
                killed["moved_after_s"] = round(now - killed["at"], 2)
        if not killed and now - watch.t0 >= KILL_AFTER_S:
            victim = max(update["actors"], key=lambda a: len(a["streams"]))
            killed.update(actor=victim["actor"], streams=list(victim["streams"]), at=time.perf_counter(),
                          last={n: frames.get(n, [-1])[-1] for n in victim["streams"]})
            ray.kill(ray.get_actor(victim["ray_name"]), no_restart=False)

    watch.t0 = time.perf_counter()
    summary = run_on_ray("default", specs(KILL_STREAMS), RunOptions(
        out=None, max_batch=BATCH, max_wait_ms=wait, queue_size=4, duration_s=SECONDS), overrides,
        ClusterOptions(actors=2, gpus_per_actor=0.5, capacity={"frames_per_s": 1e6}), on_poll=watch)
    whole = {n: f == list(range(len(f))) for n, f in frames.items()}  # every frame once, in order, from 0
    log.emit(section="ray_kill_2_actors", streams=KILL_STREAMS, killed_actor=killed.get("actor"),
             killed_streams=len(killed.get("streams", [])), moves=summary.moves,
             moved_after_s=killed.get("moved_after_s"), resumed_after_s=killed.get("resumed_after_s"),
             streams_every_frame_once=sum(whole.values()), streams_with_a_gap_or_repeat=sorted(n for n, ok in whole.items() if not ok),
             frames=summary.frames, latency_p99_ms=summary.latency_p99_ms, failed=summary.failed)
    ray.shutdown()
    result = {"environment": environment(), "resolution": [W, H], "fps": FPS, "seconds": SECONDS, "batch": BATCH,
              "latency_ms": LATENCY_MS, "rows": log.rows,
              "ray_vs_plain_total_fps": round(on_ray["total_fps"] / plain["total_fps"], 3) if plain["total_fps"] else None}
    out = Path(os.environ.get("OUT") or work)
    (out / "ray_streams.json").write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps({k: v for k, v in result.items() if k not in ("rows", "environment")}, indent=1))


if __name__ == "__main__":
    main()
