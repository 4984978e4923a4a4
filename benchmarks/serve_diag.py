"""The serving path on CUDA, step by step with tracebacks: submit_frames/collect on RGB and I420 frames, then a
short StreamRuntime run per pixel format. Writes serve_diag.json under $OUT."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


from yolotune import Detector  # noqa: E402
from yolotune.serve.plan import _clip  # noqa: E402
from yolotune.serve.runtime import RunOptions, StreamRuntime  # noqa: E402
from yolotune.serve.specs import SourceSpec  # noqa: E402


def step(rows: dict, name: str, fn) -> None:
    try:
        rows[name] = {"ok": fn()}
    except Exception:  # noqa: BLE001
        rows[name] = {"error": traceback.format_exc()[-2500:]}
    print(name, json.dumps(rows[name], default=str)[:3000], flush=True)


def main() -> None:
    out = Path(os.environ.get("OUT") or tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    rows: dict = {}
    rgb = [np.full((720, 1280, 3), 90, np.uint8)] * 3
    i420 = [np.full((1080, 1280), 90, np.uint8)] * 3
    with Detector("default", device="cuda", batch=8) as det:
        step(rows, "detect_rgb", lambda: len(det.detect(rgb)))
        step(rows, "detect_i420", lambda: len(det.detect(i420)))
        step(rows, "submit_collect_rgb", lambda: len(det.collect(det.submit_frames(rgb, 0))))
        step(rows, "submit_collect_i420", lambda: len(det.collect(det.submit_frames(i420, 1))))
        clip = _clip(Path(tempfile.mkdtemp()), 1280, 720, 30)
        for pf in ("yuv420p", "rgb24"):
            specs = [SourceSpec(str(clip), "file", f"s{i}", loop=True, realtime=True) for i in range(4)]
            opts = RunOptions(out=None, max_batch=8, max_wait_ms=8, queue_size=4, duration_s=5, pixel_format=pf)
            step(rows, f"runtime_{pf}", lambda: {k: v for k, v in StreamRuntime(det, specs, opts).run().items()
                                                 if k in ("frames", "fps", "engine_errors", "last_engine_error",
                                                          "stopped_by", "latency_p99_ms", "mean_batch")})
    (out / "serve_diag.json").write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
