"""The Detector's own stages run one after another, each timed on its own (read -> ... -> sink).

The real pipeline overlaps stages on threads and CUDA streams, which hides where time goes; here each stage runs
serialised through the pipeline's own stage functions (``pipeline/stages.py``: decoder, letterbox, results) on its
components and options, with the model split into per-section graphs, so its cost per image can be measured,
attributed and compared.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from yolotune.engine.cuda_graph import CudaGraphCache
from yolotune.io.sources import VIDEO_SUFFIXES
from yolotune.ops.letterbox import geometry_tensor
from yolotune.ops.postprocess import postprocess
from yolotune.pipeline.buffers import Batch
from yolotune.profile.sections import SectionRunner, detection_model
from yolotune.profile.timeline import StageRecorder
from yolotune.profile.video import VideoFrames
from yolotune.types import InputRef

STAGES = ("read", "decode", "h2d", "preprocess", "backbone", "neck", "head", "model", "nms", "d2h", "sink")


class StagedPipeline:
    """Runs batches of files through ``detector``'s stages, recording one Span per stage and batch."""

    def __init__(self, detector):
        self.det = detector
        model = detection_model(detector.engine)
        self.sections = SectionRunner(model) if model is not None else None
        self.graphs = detector.uses_cuda_graph
        self._captured: dict[tuple, SectionRunner] = {}
        self._post = CudaGraphCache(self._postprocess) if self.graphs else None
        self.slot = detector.direct_slot
        self.last_raw: tuple[torch.Tensor, torch.Tensor] | None = None  # last head output + geometry (for probes)
        self.last_input_shape: tuple[int, ...] | None = None  # [B, 3, H, W] of the last batch (rect canvases vary)
        self._videos: dict[str, VideoFrames] = {}  # a video's frames, read on from batch to batch

    def _postprocess(self, raw: torch.Tensor, geometry: torch.Tensor):
        return postprocess(raw, geometry, self.det.post)

    def run(self, paths: list[str], rec: StageRecorder, first_batch: int = 0) -> int:
        """All ``paths`` in batches of the detector's size; returns the number of batches run."""
        n_batches = 0
        b = self.det.batch
        with torch.inference_mode():
            for start in range(0, len(paths), b):
                self.run_batch(paths[start : start + b], rec, first_batch + n_batches)
                n_batches += 1
        return n_batches

    def run_batch(self, paths: list[str], rec: StageRecorder, index: int) -> list:
        det, slot = self.det, self.slot
        n = len(paths)
        if Path(paths[0]).suffix.lower() in VIDEO_SUFFIXES:  # a video's next frames: demuxed and decoded as predict does
            video = self._videos.get(paths[0])
            if video is None:
                video = self._videos[paths[0]] = VideoFrames(paths[0], det.video_decoder)
            with rec.stage("decode", index, n):
                frames = video.take(n)
            with rec.stage("h2d", index, n):
                batch = det.decode(det.decoder.load(frames))
        else:
            with rec.stage("read", index, n):
                loaded = det.decoder.load([(InputRef(p), None) for p in paths])
            with rec.stage("decode", index, n):
                batch = det.decode(loaded)
        images = batch.images
        if not images:
            return list(batch.order)
        bucket = det.bucket(len(images))
        if det.preprocess == "cpu" and det.device.type == "cuda":
            canvas = det.canvas_for([im.hw for im in images])
            with rec.stage("preprocess", index, n):
                geometries = det.letterbox_on_host(slot, images, canvas)
            with rec.stage("h2d", index, n):
                det.upload_letterboxed(slot, len(images), canvas)
            slot.geometry[:bucket].copy_(geometry_tensor(geometries, bucket, det.device))
            slot.canvas = canvas
        else:
            with rec.stage("preprocess", index, n):
                det.letterbox_into(slot, images, bucket)
        x, geometry = slot.input(slot.canvas)[:bucket], slot.geometry[:bucket]
        raw = self._model(x, rec, index, n)
        self.last_raw = (raw, geometry)
        self.last_input_shape = tuple(x.shape)
        with rec.stage("nms", index, n):
            dets, counts = self._post(raw, geometry) if self._post is not None else self._postprocess(raw, geometry)
        with rec.stage("d2h", index, n):
            slot.host_dets[:bucket].copy_(dets, non_blocking=True)
            slot.host_counts[:bucket].copy_(counts, non_blocking=True)
        with rec.stage("sink", index, n):
            results = self._sink(batch)
        return results

    def _model(self, x: torch.Tensor, rec: StageRecorder, index: int, n: int) -> torch.Tensor:
        if self.sections is None:  # ONNX Runtime and other opaque engines: one stage
            with rec.stage("model", index, n):
                return self.det.engine(x)
        if not self.graphs:
            state = (x, [])
            for name in self.sections.ranges:
                with rec.stage(name, index, n):
                    state = self.sections.run_section(name, *state)
            return SectionRunner.head_output(state[0])
        key = (x.data_ptr(), tuple(x.shape))
        runner = self._captured.get(key)
        if runner is None:
            runner = self._captured[key] = SectionRunner(self.sections.model)
            runner.capture(x)
        for name in runner.ranges:
            with rec.stage(name, index, n):
                runner.replay_section(name)
        return runner.graph_output()

    def _sink(self, batch: Batch) -> list:
        """Host results as the pipeline builds them (``results``), serialised as the JSONL sink writes them."""
        n = len(batch.images)
        out = self.det.results(batch, self.slot.host_dets[:n].numpy(), self.slot.host_counts[:n].numpy())
        buf = io.StringIO()
        for r in out:
            buf.write(json.dumps(r.to_dict()) + "\n")
        return out
