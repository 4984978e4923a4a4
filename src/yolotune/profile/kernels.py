"""Kernel launches, host launch time and GPU busy time per stage, from a torch.profiler (Kineto) trace.

Each stage is a ``record_function`` range on the host thread. A launch API call (cudaLaunchKernel, cuLaunchKernel
for Triton, cudaGraphLaunch, async copies) belongs to the innermost range around it; a GPU kernel or copy belongs to
the stage of the call that launched it (same correlation id). On the CPU, operator calls stand in for launches.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass

import torch

_LAUNCH_WORDS = ("LaunchKernel", "GraphLaunch", "MemcpyAsync", "MemsetAsync", "LaunchCooperativeKernel")


@dataclass
class KernelStats:
    """Per stage, per image: launches, time in launch calls on the host, GPU busy time, and the stage's host time."""

    stage: str
    launches: float = 0.0
    graph_launches: float = 0.0
    kernels: float = 0.0  # GPU kernels and copies that ran (inside graphs too)
    launch_api_ms: float = 0.0
    gpu_busy_ms: float = 0.0
    host_ms: float = 0.0

    def to_dict(self) -> dict:
        return dict(vars(self))


def profile_kernels(run_batches, device: torch.device, images: int) -> dict[str, KernelStats]:
    """Run ``run_batches()`` (stages annotated with record_function) under torch.profiler; stats per image."""
    # Kineto logs its start and stop on stderr ("USDT: ... profiler_start") below level 6, read when it first starts;
    # Ultralytics' import sets 5
    os.environ["KINETO_LOG_LEVEL"] = "6"
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        run_batches()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f).get("traceEvents", [])
    finally:
        os.unlink(path)
    return attribute(events, images, cuda=device.type == "cuda")


def attribute(events: list[dict], images: int, cuda: bool) -> dict[str, KernelStats]:
    """Kineto trace events -> KernelStats per annotated stage, divided by ``images``."""
    ranges = [e for e in events if e.get("cat") == "user_annotation" and e.get("ph") == "X"]
    ranges.sort(key=lambda e: e["dur"])  # innermost first

    def stage_at(ts: float, tid) -> str | None:
        for r in ranges:
            if r.get("tid") == tid and r["ts"] <= ts <= r["ts"] + r["dur"]:
                return r["name"]
        return None

    stats: dict[str, KernelStats] = {}
    for r in ranges:
        s = stats.setdefault(r["name"], KernelStats(r["name"]))
        s.host_ms += r["dur"] / 1e3
    by_correlation: dict[int, str] = {}
    top_level = _top_level_ops(events) if not cuda else set()
    for e in events:
        cat = e.get("cat")
        if cuda and cat in ("cuda_runtime", "cuda_driver") and any(w in e.get("name", "") for w in _LAUNCH_WORDS):
            stage = stage_at(e["ts"], e.get("tid"))
            if stage is None:
                continue
            s = stats[stage]
            s.launches += 1
            s.graph_launches += "GraphLaunch" in e["name"]
            s.launch_api_ms += e.get("dur", 0) / 1e3
            corr = (e.get("args") or {}).get("correlation")
            if corr is not None:
                by_correlation[corr] = stage
        elif not cuda and cat == "cpu_op" and id(e) in top_level:
            stage = stage_at(e["ts"], e.get("tid"))
            if stage is not None and stage != e.get("name"):
                stats[stage].launches += 1
    if cuda:
        for e in events:
            if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"):
                stage = by_correlation.get((e.get("args") or {}).get("correlation"))
                if stage is not None:
                    stats[stage].kernels += 1
                    stats[stage].gpu_busy_ms += e.get("dur", 0) / 1e3
    per_image: dict[str, KernelStats] = defaultdict(KernelStats)
    for name, s in stats.items():
        per_image[name] = KernelStats(name, *(v / max(1, images) for v in (s.launches, s.graph_launches, s.kernels,
                                                                             s.launch_api_ms, s.gpu_busy_ms, s.host_ms)))
    return dict(per_image)


def _top_level_ops(events: list[dict]) -> set[int]:
    """ids of CPU operator events not nested in another operator on their thread (aten::conv2d, not its callees)."""
    out: set[int] = set()
    by_thread: dict = defaultdict(list)
    for e in events:
        if e.get("cat") == "cpu_op" and e.get("ph") == "X":
            by_thread[e.get("tid")].append(e)
    for ops in by_thread.values():
        ops.sort(key=lambda e: (e["ts"], -e["dur"]))
        open_until = -1.0
        for e in ops:
            if e["ts"] >= open_until:
                out.add(id(e))
                open_until = e["ts"] + e["dur"]
    return out
