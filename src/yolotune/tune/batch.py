"""The winner's batch size: measured over batch sizes, picked for the objective within the caller's limits."""

from __future__ import annotations

import contextlib
import dataclasses
import time

import torch

from yolotune.options import DEFAULT_CONF
from yolotune.profile.sweep import batch_sizes, knee, letterboxed_images, measure_batch
from yolotune.tune.candidates import Candidate


def cudnn_autotune(batch: int) -> bool:
    """Whether the artifact has cuDNN autotune its convolutions when it loads: at batch 1 autotuning made the
    compiled FP16 step slower and the first detections later, at batch 128 it paid
    (benchmarks/results/optimize/reload_diag_h100_b1_cudnn.json, reload_diag_h100_bytecode_cudnn.json)."""
    return batch > 1


@contextlib.contextmanager
def as_deployed(det):
    """Time a candidate as it will run: the accuracy guard builds it with confidence 0.001 (the whole
    precision-recall curve), which sends hundreds of candidates per image through NMS; the artifact runs at the
    Detector's default threshold. Graphs are captured per input buffer, so the timing's own graphs get this one."""
    validating = det.post
    det.post = dataclasses.replace(validating, conf=DEFAULT_CONF)
    try:
        yield
    finally:
        det.post = validating


def choose_batch(Detector, best: Candidate, dev, objective, latency_ms, target_fps, memory_mib, max_batch, left_s,
                 timing_images: list[str]) -> tuple[int, list[dict]]:
    """Batch sizes for the winner, and the pick: it honours the latency budget, FPS target and memory cap, then
    takes the knee (profile/sweep.py's rule) of what is left."""
    if objective == "latency":
        return 1, []
    cap = max_batch or (256 if dev.type == "cuda" else 8)
    probe = best.result["probe_batch"]
    rows = [{"batch": probe, "latency_ms": probe / best.result["images_per_s"] * 1e3,
             "images_per_s": best.result["images_per_s"], "memory_mib": best.result["memory_mib"]}] if probe <= cap else []
    # Around the probe batch first (larger, then smaller): a new shape can cost a graph capture or a compile,
    # so when time runs out the most promising sizes have been measured.
    sizes = [b for b in batch_sizes(cap) if b != probe]
    sizes.sort(key=lambda b: (b < probe, abs(b.bit_length() - probe.bit_length())))
    with Detector(best.result["model_file"], best.options.replace(device=str(dev), batch=cap)) as det:
        h, w = det.imgsz
        sample = letterboxed_images(timing_images, (h, w), det.device)
        start = time.perf_counter()
        for b in sizes:
            if det.engine.fixed_batch not in (None, b):
                continue
            if rows and time.perf_counter() - start > max(15.0, left_s):
                break
            try:
                p = measure_batch(det, b, h, w, repeats=3, min_seconds=0.15, sample=sample)
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                continue
            rows.append(p.to_dict())
    rows.sort(key=lambda r: r["batch"])
    ok = [r for r in rows if (latency_ms is None or r["latency_ms"] <= latency_ms)
          and (memory_mib is None or r["memory_mib"] is None or r["memory_mib"] <= memory_mib)]
    if not ok:
        return (rows[0]["batch"] if rows else 1), rows
    if target_fps is not None:
        meeting = [r for r in ok if r["images_per_s"] >= target_fps]
        if meeting:  # the smallest batch that meets the target has the lowest latency
            return min(meeting, key=lambda r: r["batch"])["batch"], rows
    # max throughput: the knee, for far lower latency and memory than the largest batch at the same rate
    return knee(ok, rate=lambda r: r["images_per_s"])["batch"], rows
