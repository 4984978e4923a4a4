"""Small measurements that ground a recommendation's predicted gain in this run's data (not in fixed factors)."""

from __future__ import annotations

import time

import torch

from yolotune.io.decode import ImageDecoder
from yolotune.ops.letterbox import letterbox_batch
from yolotune.ops.postprocess import postprocess
from yolotune.pipeline.buffers import Batch
from yolotune.types import InputRef


def time_per_call(fn, device: torch.device, reps: int = 5) -> float:
    """Seconds per call of ``fn`` on ``device`` after one warm-up call (synchronised on CUDA)."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / reps


@torch.inference_mode()
def batched_nms_ms(detector, raw: torch.Tensor, geometry: torch.Tensor) -> float:
    """ms/image of the batched GPU NMS (eager, so launch costs included) on the run's own head output."""
    from dataclasses import replace

    cfg = replace(detector.post, nms_backend="auto")
    return time_per_call(lambda: postprocess(raw, geometry, cfg), raw.device) * 1e3 / raw.shape[0]


@torch.inference_mode()
def gpu_decode_preprocess_ms(detector, paths: list[str], batch: int) -> float | None:
    """ms/image of nvJPEG decode + device letterbox for one batch of the run's files (host clock, synchronised)."""
    if detector.device.type != "cuda":
        return None
    decoder = ImageDecoder(detector.device, gpu_decode=True)
    try:
        loaded = decoder.load([(InputRef(p), None) for p in paths[:batch]])
        out = torch.empty(len(loaded), 3, *detector.imgsz, device=detector.device, dtype=detector.engine.input_dtype)

        def step():
            images = Batch.from_decoded(decoder.decode_loaded(loaded)).images
            if images:
                letterbox_batch([im.tensor for im in images], out[: len(images)])

        return time_per_call(step, detector.device, reps=3) * 1e3 / max(1, len(loaded))
    finally:
        decoder.close()


@torch.inference_mode()
def hardware_decode(detector, paths: list[str], batch: int) -> tuple[float | None, str | None]:
    """(ms/image of the GPU's hardware JPEG decoders (NVJPG) on one batch of the run's files, host clock,
    synchronised; None and why where there are none: nvImageCodec missing, a GPU without NVJPG, no JPEG they take)."""
    from yolotune.io import jpeg_hardware

    problem = jpeg_hardware.hardware_problem(detector.device)
    if problem:
        return None, problem
    try:
        decoder = jpeg_hardware.HardwareJpegDecoder(detector.device, batch)
    except jpeg_hardware.HardwareJpegUnavailable as e:
        return None, str(e)
    loader = ImageDecoder(detector.device, jpeg_decode="cuda")
    try:
        loaded = [x for x in loader.load([(InputRef(p), None) for p in paths[:batch]])
                  if x[2] is not None and x[2].hardware_decodable]
        if not loaded:
            return None, "none of the run's first files is a JPEG the hardware decoders take"
        datas = [x[1] for x in loaded]
        return time_per_call(lambda: decoder.decode(datas), detector.device, reps=3) * 1e3 / len(datas), None
    finally:
        loader.close()
