"""What a --ray actor's call costs beyond the model, in one process without Ray: one predict over every input
against one predict per call of CALL inputs (as an actor runs them), the same with the call's results pickled, and
the input listing alone. Usage: DEVICE=cuda BATCH=64 IMAGES=512 PASSES=40 CALLS=2048,8192 python
benchmarks/ray_call_diag.py. Writes $OUT/ray_call_diag.json.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import Log, environment, make_photo_jpegs  # noqa: E402

DEVICE = os.environ.get("DEVICE", "cpu")
IMAGES = int(os.environ.get("IMAGES", "64"))
PASSES = int(os.environ.get("PASSES", "2"))
BATCH = int(os.environ.get("BATCH", "8"))
CALLS = [int(n) for n in os.environ.get("CALLS", "64").split(",")]


def main() -> None:
    from yolotune import Detector
    from yolotune.io.sources import expand_sources
    from yolotune.scale.predict import results_per_input

    log = Log("ray_call_diag")
    work = Path(tempfile.mkdtemp(prefix="ray-call-diag-"))
    photos = sorted(str(p) for p in Path(make_photo_jpegs(work / "photos", IMAGES, seed=3)[0]).parent.glob("*.jpg"))
    paths = photos * PASSES
    with Detector("default", device=DEVICE, batch=BATCH) as det:
        for _ in det.predict(photos):  # graphs captured, caches warm
            pass
        t = time.perf_counter()
        n = sum(1 for _ in det.predict(paths))
        log.emit(section="one_predict", inputs=n, images_per_s=round(n / (time.perf_counter() - t), 1))
        for size in CALLS:
            for pickled in (False, True):
                t = time.perf_counter()
                firsts, tails = [], []
                for k in range(0, len(paths), size):
                    call = paths[k:k + size]
                    c0 = time.perf_counter()
                    results, first = [], None
                    for r in det.predict(call):
                        first = first or time.perf_counter()
                        results.append(r)
                    last = time.perf_counter()
                    if pickled:
                        pickle.dumps(results_per_input(call, ["image"] * len(call), results))
                    firsts.append(first - c0)
                    tails.append(time.perf_counter() - last)
                wall = time.perf_counter() - t
                log.emit(section=f"calls_of_{size}", pickled=pickled, images_per_s=round(len(paths) / wall, 1),
                         first_result_ms=round(1e3 * sum(firsts) / len(firsts), 1),
                         after_last_result_ms=round(1e3 * sum(tails) / len(tails), 1))
        t = time.perf_counter()
        expand_sources(paths[:2048])
        log.emit(section="list_2048_inputs", ms=round(1e3 * (time.perf_counter() - t), 1))
    out = Path(os.environ.get("OUT") or work)
    (out / "ray_call_diag.json").write_text(json.dumps({"environment": environment(), "rows": log.rows}, indent=1))


if __name__ == "__main__":
    main()
