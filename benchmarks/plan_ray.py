"""``plan`` against ``plan --ray``, side by side in one process on one device: the same streams (RES at FPS, p99
within LATENCY_MS), predicted and verified by plain plan in this process, then by plan --ray with one stream actor on
a local Ray cluster (its GPU type measured in the actor, the total verified through the controller).
Environment: RES (1280x720 / 320x240), FPS (30 / 5), LATENCY_MS (50 / none), RUN_SECONDS (20 / 6), BATCH (32 / 4).
Writes $OUT/plan_ray.json.
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
FPS = float(os.environ.get("FPS", "30" if CUDA else "5"))
LATENCY_MS = float(os.environ["LATENCY_MS"]) if os.environ.get("LATENCY_MS") else (50.0 if CUDA else None)
SECONDS = run_seconds("20" if CUDA else "6")
BATCH = int(os.environ.get("BATCH", "32" if CUDA else "4"))
SIDES = os.environ.get("SIDES", "plain,ray").split(",")  # ray alone: plan --ray only (plain plan measured before)


def main() -> None:
    import ray

    from yolotune.scale.plan import plan_on_ray
    from yolotune.scale.run import ClusterOptions
    from yolotune.serve.plan import plan, planning_detector

    log = Log("plan_ray")
    device = "cuda" if CUDA else "cpu"
    keys = ("streams", "holds", "min_stream_fps", "max_lag_s", "dropped", "latency_p50_ms", "latency_p99_ms",
            "total_fps", "mean_batch")
    t0 = time.perf_counter()
    plain = None
    if "plain" in SIDES:
        with planning_detector("default", device, BATCH) as det:
            plain = plan(det, FPS, (W, H), verify_seconds=SECONDS, latency_budget_ms=LATENCY_MS)
        log.emit(section="plan", seconds=round(time.perf_counter() - t0, 1), predicted=plain.predicted_streams,
                 binding=plain.binding, limits=plain.limits, verified=plain.verified_streams,
                 runs=[{k: v.get(k) for k in keys} for v in plain.verification])
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    t0 = time.perf_counter()
    on_ray = plan_on_ray("default", FPS, (W, H), {"device": device, "batch": BATCH}, ClusterOptions(actors=1),
                         verify_seconds=SECONDS, latency_budget_ms=LATENCY_MS)
    log.emit(section="plan_ray", seconds=round(time.perf_counter() - t0, 1), predicted=on_ray.predicted_streams,
             capacities=on_ray.capacities, verified=on_ray.verified_streams,
             runs=[{k: v.get(k) for k in keys} for v in on_ray.verification])
    ray.shutdown()
    result = {"environment": environment(), "resolution": [W, H], "fps": FPS, "latency_ms": LATENCY_MS,
              "batch": BATCH, "seconds": SECONDS, "rows": log.rows,
              "plain": {"predicted": plain.predicted_streams, "verified": plain.verified_streams} if plain else None,
              "ray": {"predicted": on_ray.predicted_streams, "verified": on_ray.verified_streams}}
    out = Path(os.environ.get("OUT") or tempfile.mkdtemp())
    (out / "plan_ray.json").write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps({k: result[k] for k in ("plain", "ray")}))


if __name__ == "__main__":
    main()
