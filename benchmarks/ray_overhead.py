"""Ray's overhead, side by side in one process: plain predict vs ``predict --ray`` with one actor, and 2 actors vs 1.

Each run is the whole job (inputs listed, JSONL written) on the same real-photo 720p JPEGs; the Ray runs share one
local cluster started once (its start-up is reported apart), so each includes its actors' start and model load.
Runs alternate (plain, 1 actor, 2 actors) ``REPEATS`` times. Writes $OUT/ray_overhead.json.
Usage: DEVICE=cpu IMAGES=160 REPEATS=2 python benchmarks/ray_overhead.py; on a GPU, DEVICE=cuda BATCH=64 PASSES=20
(2 actors then share the one GPU, half each).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import Log, environment, make_photo_jpegs  # noqa: E402

DEVICE = os.environ.get("DEVICE", "cpu")
IMAGES = int(os.environ.get("IMAGES", "160"))
REPEATS = int(os.environ.get("REPEATS", "2"))
BATCH = int(os.environ.get("BATCH", "8"))
PASSES = int(os.environ.get("PASSES", "1"))  # the photos listed this many times: a long job on a fast device


def main() -> None:
    import ray

    from yolotune import Detector
    from yolotune.pipeline.run import predict_to_sinks
    from yolotune.scale.predict import predict_on_ray

    log = Log("ray_overhead")
    work = Path(tempfile.mkdtemp(prefix="ray-overhead-"))
    photos = work / "photos"
    make_photo_jpegs(photos, IMAGES, seed=3)
    opts = {"device": DEVICE, "batch": BATCH}
    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    log.emit(section="ray_start", seconds=round(time.perf_counter() - t0, 2))
    with Detector("default", **opts) as det:  # the plain side keeps its model loaded, as one long predict would
        predict_to_sinks(det, [photos], work / "warm", ["jsonl"])
        for r in range(REPEATS):
            t = time.perf_counter()
            s = predict_to_sinks(det, [photos] * PASSES, work / f"plain{r}", ["jsonl"])
            log.emit(section="plain", repeat=r, wall_s=round(time.perf_counter() - t, 2), images_per_s=s.images_per_s)
            for n in (1, 2):
                t = time.perf_counter()
                s = predict_on_ray("default", [photos] * PASSES, work / f"ray{n}_{r}", ["jsonl"], opts, actors=n,
                                   gpus_per_actor=1.0 / n)
                wall = time.perf_counter() - t
                busy = sum(a["images_per_s"] for a in s.actors)  # actors' own rate, start-up and model load excluded
                log.emit(section=f"ray_{n}_actors", repeat=r, wall_s=round(wall, 2), images_per_s=s.images_per_s,
                         actors_busy_images_per_s=round(busy, 1), actors=s.actors)
    ray.shutdown()
    rows = log.rows
    def best(section, key):
        return max(x[key] for x in rows if x["section"] == section)
    summary = {
        "environment": environment(), "images": IMAGES, "passes": PASSES, "batch": BATCH, "device": DEVICE, "rows": rows,
        "plain_images_per_s": best("plain", "images_per_s"),
        "ray_1_actor_images_per_s": best("ray_1_actors", "images_per_s"),
        "ray_2_actors_images_per_s": best("ray_2_actors", "images_per_s"),
        "ray_1_actor_busy_images_per_s": best("ray_1_actors", "actors_busy_images_per_s"),
    }
    summary["ray_1_vs_plain"] = round(summary["ray_1_actor_images_per_s"] / summary["plain_images_per_s"], 3)
    summary["ray_1_busy_vs_plain"] = round(summary["ray_1_actor_busy_images_per_s"] / summary["plain_images_per_s"], 3)
    summary["ray_2_vs_1"] = round(summary["ray_2_actors_images_per_s"] / summary["ray_1_actor_images_per_s"], 3)
    out = Path(os.environ.get("OUT") or work)
    (out / "ray_overhead.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("rows", "environment")}, indent=1))


if __name__ == "__main__":
    main()
