"""The Detector's own stages run one after another, each timed on its own (read -> ... -> sink).

The real pipeline overlaps stages on threads and CUDA streams, which hides where time goes; here each stage runs
serialised with the Detector's own components and options (decoder, letterbox, engine or per-section graphs,
NMS backend, copy-back), so its cost per image can be measured, attributed and compared.
"""

from __future__ import annotations

import io
import json

import torch

from yolotune.engine.cuda_graph import CudaGraphCache
from yolotune.ops.letterbox import geometry_tensor, letterbox_batch
from yolotune.ops.postprocess import postprocess
from yolotune.pipeline.buffers import Batch
from yolotune.profile.sections import SectionRunner, detection_model
from yolotune.profile.timeline import StageRecorder
from yolotune.types import Detections, ErrorRecord, InputRef

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
        self.slot = detector._direct_slot
        self.last_raw: tuple[torch.Tensor, torch.Tensor] | None = None  # last head output + geometry (for probes)
        self.last_input_shape: tuple[int, ...] | None = None  # [B, 3, H, W] of the last batch (rect canvases vary)

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
        det = self.det
        n = len(paths)
        with rec.stage("read", index, n):
            loaded = det.decoder.load([(InputRef(p), None) for p in paths])
        with rec.stage("decode", index, n):
            batch = Batch.from_decoded(det.decoder.decode_loaded(loaded))
        images = batch.images
        if not images:
            return list(batch.order)
        bucket = det.bucket(len(images))
        canvas = det._canvas([im.hw for im in images])
        x = self.slot.input(canvas)
        if det.preprocess == "cpu" and det.device.type == "cuda":
            host, device_u8 = self.slot.host_input(canvas)
            with rec.stage("preprocess", index, n):
                geometries = letterbox_batch([im.tensor for im in images], host[: len(images)])
            with rec.stage("h2d", index, n):
                device_u8[: len(images)].copy_(host[: len(images)], non_blocking=True)
                x[: len(images)].copy_(device_u8[: len(images)]).mul_(1.0 / 255.0)
        else:
            with rec.stage("preprocess", index, n):
                geometries = letterbox_batch([im.tensor for im in images], x[: len(images)])
        geometry = self.slot.geometry[:bucket]
        geometry.copy_(geometry_tensor(geometries, bucket, det.device))
        raw = self._model(x[:bucket], rec, index, n)
        self.last_raw = (raw, geometry)
        self.last_input_shape = tuple(x[:bucket].shape)
        with rec.stage("nms", index, n):
            dets, counts = self._post(raw, geometry) if self._post is not None else self._postprocess(raw, geometry)
        with rec.stage("d2h", index, n):
            self.slot.host_dets[:bucket].copy_(dets, non_blocking=True)
            self.slot.host_counts[:bucket].copy_(counts, non_blocking=True)
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
        """Host results as the pipeline builds them, serialised as JSON lines (what the JSONL sink writes)."""
        det = self.det
        dets = self.slot.host_dets[: len(batch.images)].numpy()
        counts = self.slot.host_counts[: len(batch.images)].numpy()
        out, buf = [], io.StringIO()
        for entry in batch.order:
            if isinstance(entry, ErrorRecord):
                out.append(entry)
            else:
                im, d = batch.images[entry], dets[entry, : counts[entry]]
                out.append(Detections(im.ref, im.hw, d[:, :4].copy(), d[:, 4].copy(), d[:, 5].astype("int64"), det.names))
            buf.write(json.dumps(out[-1].to_dict()) + "\n")
        return out
