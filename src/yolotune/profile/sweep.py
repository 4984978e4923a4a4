"""Throughput and latency of the detector's model + NMS step over batch sizes, up to what memory allows."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch


@dataclass
class SweepPoint:
    batch: int
    latency_ms: float  # one batch, median of the timed repeats
    latency_spread_ms: float  # max - min of the repeats
    images_per_s: float
    memory_mib: float | None  # peak device memory of the step (GPU)

    def to_dict(self) -> dict:
        return dict(vars(self))


def batch_sizes(max_batch: int) -> list[int]:
    out, b = [], 1
    while b <= max_batch:
        out.append(b)
        b *= 2
    return out


def sweep_batches(detector, max_batch: int, repeats: int = 5, min_seconds: float = 0.15) -> tuple[list[SweepPoint], str]:
    """The detector's step (as the pipeline runs it: graph or eager, same NMS) at batch 1, 2, 4, ... ``max_batch``.

    Stops early at an out-of-memory error or when memory passes 80% of the device. Returns points and a note.
    """
    det = detector
    cuda = det.device.type == "cuda"
    h, w = det.imgsz
    points: list[SweepPoint] = []
    note = f"batches 1..{max_batch}"
    total = torch.cuda.get_device_properties(det.device).total_memory if cuda else None
    for b in batch_sizes(max_batch):
        if det.engine.fixed_batch not in (None, b):
            continue
        try:
            point = measure_batch(det, b, h, w, repeats, min_seconds)
        except torch.OutOfMemoryError:
            note = f"stopped at batch {b}: out of GPU memory"
            torch.cuda.empty_cache()
            break
        points.append(point)
        if cuda and point.memory_mib is not None and point.memory_mib * 2**20 > 0.8 * total:
            note = f"stopped after batch {b}: over 80% of GPU memory"
            break
    return points, note


def letterboxed_images(paths: Iterable[str], hw: tuple[int, int], device: torch.device, limit: int = 8) -> torch.Tensor | None:
    """Up to ``limit`` of the images at ``paths`` letterboxed to ``hw``, [k, 3, h, w] float in [0, 1] on ``device``;
    None when none of them decodes. Timing on real pictures: noise makes a different number of NMS candidates."""
    from yolotune.io.decode import decode_with_pil, read_file
    from yolotune.ops.letterbox import letterbox_batch

    images = []
    for p in paths:
        if len(images) == limit:
            break
        try:
            images.append(torch.from_numpy(decode_with_pil(read_file(p))).permute(2, 0, 1).contiguous().to(device))
        except Exception:  # an unreadable file is skipped (the accuracy guard reports it)
            continue
    if not images:
        return None
    out = torch.empty(len(images), 3, *hw, device=device)
    letterbox_batch(images, out)
    return out


def measure_batch(det, b: int, h: int, w: int, repeats: int, min_seconds: float,
             sample: torch.Tensor | None = None) -> SweepPoint:
    """One b-image step timed back to back; on ``sample``'s pictures (repeated to fill the batch), else on noise."""
    cuda = det.device.type == "cuda"
    # b images run as the Detector's smallest batch where that is larger (padded, as the Detector pads them: a
    # compiled engine's batch 1 runs as 2 unless the Detector's batch is 1): the time is one b-image batch's, and
    # images/s counts the b real images
    buckets = getattr(det, "buckets", None)
    n = max(b, buckets[0] if buckets else getattr(det.engine, "min_batch", 1))
    tuned = getattr(det, "autotune_batches", None)
    if tuned is not None:  # timed as this batch would run as a Detector's own: cuDNN autotuned (if on)
        tuned.add(n)
    if sample is not None and tuple(sample.shape[-2:]) == (h, w):
        x = sample[torch.arange(n, device=sample.device) % len(sample)].to(det.device, det.engine.input_dtype)
    else:
        x = torch.rand(n, 3, h, w, device=det.device).to(det.engine.input_dtype)
    if det.engine.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    g = torch.tensor([[1.0, 1.0, 0.0, 0.0, float(h), float(w)]], device=det.device).repeat(n, 1)  # identity geometry
    if cuda:
        torch.cuda.synchronize(det.device)
        torch.cuda.reset_peak_memory_stats(det.device)
    with torch.inference_mode():
        det.step(x, g)  # capture / warm up
        if cuda:
            torch.cuda.synchronize(det.device)
        once = _time(det, x, g, 1, cuda)
        inner = max(1, int(min_seconds / max(once, 1e-6)))
        samples = [_time(det, x, g, inner, cuda) for _ in range(repeats)]
    samples.sort()
    median = samples[len(samples) // 2]
    mem = torch.cuda.max_memory_allocated(det.device) / 2**20 if cuda else None
    return SweepPoint(b, median * 1e3, (samples[-1] - samples[0]) * 1e3, b / median, mem)


def _time(det, x, g, n: int, cuda: bool) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        det.step(x, g)
    if cuda:
        torch.cuda.synchronize(det.device)
    return (time.perf_counter() - t0) / n


# The one knee rule of profile, plan and optimize: more batching buys less than this, which is within the
# run-to-run spread of a batch's throughput (benchmarks/results/README.md), so the smaller batch is taken
KNEE_WITHIN = 0.97


def knee(points: list, rate: Callable[[object], float] = lambda p: p.images_per_s,
         within: float = KNEE_WITHIN):
    """The smallest batch whose ``rate`` reaches ``within`` of the best: where the curve flattens. ``points`` in
    batch order (SweepPoints, or rows with a rate of their own); None for none."""
    if not points:
        return None
    best = max(rate(p) for p in points)
    return next(p for p in points if rate(p) >= within * best)
