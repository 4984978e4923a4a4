"""The real, overlapped pipeline timed end to end: what ``profile`` reports as its headline rate and what
``profile --verify`` measures each fix with."""

from __future__ import annotations

import io
import json
import statistics
import time


def e2e_inputs(paths: list[str], rate_guess: float, seconds: float = 1.5, cap: int = 20000) -> list[str]:
    """``paths`` cycled so one end-to-end run lasts about ``seconds``: pipeline fill and drain become negligible."""
    n = max(len(paths), min(cap, int(rate_guess * seconds)))
    return (paths * (-(-n // len(paths))))[:n]


def measure_end_to_end(detector, paths: list[str], repeats: int) -> dict:
    """The real pipeline (overlapped ``predict``) over ``paths``, ``repeats`` times: images/s and spread.

    Each result is serialised as a JSON line (to memory), as the profile's "sink" stage does.
    """
    rates, errors, boxes = [], 0, 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = 0
        sink = io.StringIO()
        for r in detector.predict(paths):
            n += 1
            errors += not r.ok
            boxes += len(r) if r.ok else 0
            sink.write(json.dumps(r.to_dict()) + "\n")
        rates.append(n / (time.perf_counter() - t0))
    return {"images_per_s": statistics.mean(rates), "std": statistics.pstdev(rates) if len(rates) > 1 else 0.0,
            "samples": rates, "errors": errors, "images": n,  # a video's frames each
            "detections_per_image": boxes / max(1, n * repeats)}
