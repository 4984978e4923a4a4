"""What the stream runtime picks for this device when asked for "auto": pixel format, decoders, ring pinning."""

from __future__ import annotations

import os


def pixel_format_for(choice: str, detector) -> str:
    """rgb24 or yuv420p for the frames handed over: the choice, or for "auto" I420 where the device converts it."""
    if choice not in ("auto", "rgb24", "yuv420p"):
        raise ValueError(f"pixel format must be auto, rgb24 or yuv420p, not {choice!r}")
    if choice != "auto":
        return choice
    gpu_preprocess = getattr(detector, "preprocess", "cpu") == "gpu" and detector.device.type == "cuda"
    return "yuv420p" if gpu_preprocess else "rgb24"  # on a CPU, FFmpeg's own conversion is the faster one


def decoder_mode(choice: str, detector, n_sources: int) -> str:
    """threads or processes for decoding: the choice, or for "auto" what suits this device and core count."""
    if choice not in ("auto", "threads", "processes"):
        raise ValueError(f"decoders must be auto, threads or processes, not {choice!r}")
    if choice != "auto":
        return choice
    # threads on few cores, processes where many cores decode beside the engine thread (its GIL):
    # benchmarks/results/serve/decode_workers_cpu.json, decode_paths_h100.json
    cuda = getattr(getattr(detector, "device", None), "type", "cpu") == "cuda"
    return "processes" if cuda and (os.cpu_count() or 1) >= 8 and n_sources > 1 else "threads"


def ring_pinner(detector):
    """How the decoder pool page-locks its rings for this detector's device (None: frames go through staging)."""
    device = getattr(detector, "device", None)
    if getattr(device, "type", "cpu") != "cuda" or not detector.frames.one_graph:
        return None
    from yolotune.pipeline.buffers import register_host_memory

    return lambda buffer: register_host_memory(buffer, device)
