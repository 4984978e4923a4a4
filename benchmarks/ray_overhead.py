"""Ray's overhead, side by side in one process: plain predict vs ``predict --ray`` with one actor, and 2 actors vs 1.

Each run is a whole cold job on the same real-photo 720p JPEGs, as a command runs it: plain predict builds its
Detector (model load, graph capture) and predicts; ``--ray`` starts its actors (each loads the model) on a cluster
that is already up (``ray start --head``; its start is reported apart) and predicts. Both write JSONL. Reported per
run: the whole job's images/s, and the steady rate from the first result to the last (start-up excluded). Runs
alternate (plain, 1 actor, 2 actors) ``REPEATS`` times. Writes $OUT/ray_overhead.json.
Usage: DEVICE=cpu IMAGES=160 REPEATS=2 python benchmarks/ray_overhead.py; on a GPU, DEVICE=cuda BATCH=64 PASSES=100
(the photos listed PASSES times: a job long enough for its start-up to matter little; 2 actors share the one GPU).
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
PASSES = int(os.environ.get("PASSES", "1"))
ACTORS = [int(n) for n in os.environ.get("ACTORS", "1,2").split(",")]


class Clock:
    """progress(done, total, seconds) -> when the first results came, when a tenth of them had come, and when the
    last came. The steady rate is over the last nine tenths: --ray's results come a call at a time, so its first
    result comes with a whole call's."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.start = self.first = self.last = None
        self.first_n = self.last_n = 0

    def __call__(self, done: int, total, seconds: float) -> None:
        now = time.perf_counter()
        self.start = self.start or now
        if self.first is None and total and done >= total / 10:
            self.first, self.first_n = now, done
        self.last, self.last_n = now, done

    def row(self, images: int) -> dict:
        wall = time.perf_counter() - self.t0
        steady = ((self.last_n - self.first_n) / (self.last - self.first)
                  if self.first is not None and self.last > self.first else None)
        return {"wall_s": round(wall, 2), "images_per_s": round(images / wall, 1),
                "start_s": round(self.start - self.t0, 2) if self.start is not None else None,
                "steady_images_per_s": round(steady, 1) if steady else None}


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
    with Detector("default", **opts) as det:  # once, untimed: the disk cache and the CUDA driver warm for both sides
        predict_to_sinks(det, [photos], work / "warm", ["jsonl"])
    n = IMAGES * PASSES
    for r in range(REPEATS):
        clock = Clock()
        with Detector("default", **opts) as det:
            s = predict_to_sinks(det, [photos] * PASSES, work / f"plain{r}", ["jsonl"], progress=clock)
        log.emit(section="plain", repeat=r, ok=s.ok, **clock.row(n))
        for k in ACTORS:
            clock = Clock()
            s = predict_on_ray("default", [photos] * PASSES, work / f"ray{k}_{r}", ["jsonl"], opts, actors=k,
                               gpus_per_actor=1.0 / k, progress=clock)
            busy = sum(a["images_per_s"] for a in s.actors)  # each actor's own rate while in its calls, summed
            log.emit(section=f"ray_{k}_actors", repeat=r, ok=s.ok, actors_busy_images_per_s=round(busy, 1),
                     actors=s.actors, **clock.row(n))
    ray.shutdown()
    rows = log.rows

    def best(section: str, key: str) -> float:
        return max(x[key] or 0 for x in rows if x["section"] == section)

    summary = {"environment": environment(), "images": IMAGES, "passes": PASSES, "inputs_per_job": n,
               "batch": BATCH, "device": DEVICE, "rows": rows}
    for key in ("images_per_s", "steady_images_per_s"):
        summary[f"plain_{key}"] = best("plain", key)
        for k in ACTORS:
            summary[f"ray_{k}_{key}"] = best(f"ray_{k}_actors", key)
            summary[f"ray_{k}_vs_plain_{key}"] = round(summary[f"ray_{k}_{key}"] / summary[f"plain_{key}"], 3)
    if len(ACTORS) > 1:
        summary[f"ray_{ACTORS[-1]}_vs_{ACTORS[0]}"] = round(
            summary[f"ray_{ACTORS[-1]}_images_per_s"] / summary[f"ray_{ACTORS[0]}_images_per_s"], 3)
    out = Path(os.environ.get("OUT") or work)
    (out / "ray_overhead.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("rows", "environment")}, indent=1))


if __name__ == "__main__":
    main()
