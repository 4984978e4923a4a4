"""Detector: sources -> decode -> preprocess -> engine -> postprocess -> results, batched and overlapped.

Overlap on CUDA: a producer thread reads, decodes (nvJPEG / Pillow threads) and letterboxes batch i+1 on its own
CUDA stream into one of two input slots, while the main thread replays batch i's CUDA graph (model + NMS) on the
compute stream and copies [B, max_det, 6] + [B] back to the slot's pinned buffers. A slot returns to the producer
once its results have been read on the host, so two batches are in flight and memory stays bounded.

The per-batch steps are BatchStages' (stages.py); in-memory frames take FramePath (frames.py).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from yolotune.io.sources import SourceList, expand_sources
from yolotune.io.video import video_frame_count
from yolotune.models import LoadedModel, load_model
from yolotune.models.artifact import artifact_options
from yolotune.options import DEFAULT_CONF, DetectorOptions
from yolotune.pipeline.buffers import Batch
from yolotune.pipeline.frames import FramePath
from yolotune.pipeline.producer import BatchProducer
from yolotune.pipeline.stages import BatchStages, resolve_device
from yolotune.types import Detections, Result

__all__ = ["DEFAULT_CONF", "Detector", "resolve_device"]


class Detector(BatchStages):
    """YOLO detection on files, videos or in-memory frames, as fast as the device allows.

    >>> det = Detector("yolov8n.pt", device="cuda", batch=32)
    >>> for result in det.predict(["images/"]):
    ...     print(result.to_dict())

    ``options`` (a DetectorOptions) and keyword overrides (its field names) set how it runs; an artifact folder
    from ``optimize`` brings the options it was tuned with (``options`` replaces them, overrides still win).
    """

    def __init__(self, model: str | Path | LoadedModel, options: DetectorOptions | None = None, **overrides):
        model, options = artifact_options(model, options, overrides)
        super().__init__(load_model(model, **options.model_options()), options)
        self.frames = FramePath(self)
        self._busy = threading.Lock()
        self.frames.busy = self._busy.locked
        # a compiled artifact: its saved function loads while cuDNN tunes the full batch's convolutions (a rect
        # canvas is known only from the first batch)
        self.warm_started = not self.rect and self.engine.warm_start(self.batch, self.imgsz)

    # ------------------------------------------------------------------------------------------ predict
    def count_inputs(self, sources: SourceList) -> int | None:
        """Inputs a run over ``sources`` will yield (None when a video does not declare its frame count)."""
        total = 0
        for item in sources.items:
            if item.kind == "video":
                frames = video_frame_count(item.path)
                if frames is None:
                    return None
                total += frames
            else:
                total += 1
        return total

    def predict(self, sources: str | Path | Iterable[str | Path] | SourceList) -> Iterator[Result]:
        """Detections (or an ErrorRecord) for every input, in input order.

        Two batches are in flight: while batch i replays on the compute stream, the producer prepares batch i+1.
        """
        if isinstance(sources, (str, Path)):
            sources = [sources]
        source_list = sources if isinstance(sources, SourceList) else expand_sources(sources)
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("this Detector is already running predict(); use one Detector per thread")
        start = time.perf_counter()
        producer = BatchProducer(self, source_list, self.slots)
        pending: Batch | None = None
        try:
            for batch in producer:
                self.launch(batch)
                if pending is not None:
                    yield from self.collect(pending, producer.release)
                pending = batch
            if pending is not None:
                batch, pending = pending, None
                yield from self.collect(batch, producer.release)
        finally:
            producer.close()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.stats["seconds"] += time.perf_counter() - start
            self._busy.release()

    # ------------------------------------------------------------------------------------------ in memory
    def detect(self, frames: Sequence[np.ndarray | torch.Tensor]) -> list[Detections]:
        """Synchronous detection on in-memory frames ([h, w, 3] uint8 RGB arrays or [3, h, w] uint8 tensors).

        The low-latency path: no threads, one stream; host frame in, host boxes out. Frames may also be I420 planes
        ([h * 3 / 2, w] uint8, as PyAV decodes them): converted to RGB on the device, half the bytes to upload.
        """
        return self.frames.detect(frames)

    def submit_frames(self, frames: Sequence[np.ndarray | torch.Tensor], slot: int) -> Batch:
        """Start detection of up to ``batch`` in-memory frames in slot 0 or 1 and return without waiting.

        Upload, colour conversion and letterbox run on the decode stream, model + NMS on the compute stream, so one
        slot's batch can be prepared while the other's computes. ``collect(batch)`` waits for the results; a slot
        must be collected before it is submitted again. Not for use while ``predict()`` runs (it owns the slots).
        """
        return self.frames.submit(frames, slot)

    def prepare_frames(self, hw: tuple[int, int], layout: str = "i420") -> float:
        """Capture the one-graph path of every batch size for ``hw`` (height, width) pictures in ``layout``, for
        submit_frames' two slots, before any frame comes: a stream run would otherwise stall at each new batch size
        while its sources' clocks run. Returns the seconds it took; 0 without that path."""
        return self.frames.prepare(hw, layout)

    def close(self) -> None:
        self.decoder.close()

    def __enter__(self) -> "Detector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
