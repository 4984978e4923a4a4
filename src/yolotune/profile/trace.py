"""A Chrome trace-event JSON of a profile (opens in ui.perfetto.dev and chrome://tracing): phases, every stage span
on the host and on the GPU, and the NVML counters as counter tracks."""

from __future__ import annotations

import json
from pathlib import Path

_HOST, _GPU, _PHASES, _COUNTERS = 1, 2, 3, 4
_COUNTER_NAMES = {"gpu_util": "GPU utilisation %", "mem_util": "memory bandwidth utilisation %",
                  "sm_clock_mhz": "SM clock MHz", "mem_used_mib": "GPU memory used MiB", "power_w": "power W"}


def trace_events(profile: dict) -> list[dict]:
    us = 1e6
    ev: list[dict] = []
    for pid, name in ((_PHASES, "profile phases"), (_HOST, "host: stages (serialised run)"),
                      (_GPU, "GPU: stages (CUDA events)"), (_COUNTERS, "GPU counters (NVML)")):
        ev.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": name}})
        ev.append({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0, "args": {"sort_index": pid}})
    for ph in profile.get("phases", []):
        ev.append({"ph": "X", "name": ph["name"], "pid": _PHASES, "tid": 0, "ts": ph["start"] * us,
                   "dur": (ph["end"] - ph["start"]) * us})
    for stage, batch, images, h0, h_enq, h1, g0, g1 in profile.get("timeline", []):
        args = {"batch": batch, "images": images, "host_enqueue_ms": (h_enq - h0) * 1e3}
        ev.append({"ph": "X", "name": stage, "cat": "stage", "pid": _HOST, "tid": 0, "ts": h0 * us, "dur": (h1 - h0) * us,
                   "args": args})
        if g0 is not None:
            ev.append({"ph": "X", "name": stage, "cat": "stage", "pid": _GPU, "tid": 0, "ts": g0 * us,
                       "dur": max(0.0, g1 - g0) * us, "args": {"batch": batch, "images": images}})
    counters = profile.get("counters") or {}
    for key, label in _COUNTER_NAMES.items():
        for t, v in zip(counters.get("t", []), counters.get(key, [])):
            if v == v:  # skip NaN (power unavailable)
                ev.append({"ph": "C", "name": label, "pid": _COUNTERS, "tid": 0, "ts": t * us, "args": {label: v}})
    return ev


def write_trace(profile: dict, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps({"traceEvents": trace_events(profile), "displayTimeUnit": "ms",
                                "otherData": {"model": profile.get("model"), "device": profile.get("device", {}).get("name"),
                                              "pipeline": profile.get("pipeline")}}))
    return path
