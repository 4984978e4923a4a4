"""In-memory frames: ``detect`` (synchronous, lowest latency) and ``submit_frames`` (two batches in flight, for
``run``'s stream runtime), on a pipeline's BatchStages.

Same-size frames (host RGB or I420, NVDEC's NV12 on the device) take one CUDA graph: upload, colour conversion,
letterbox, model, NMS and the copy-back. Other frames (tensors, mixed sizes, the CPU) go through the stages one by
one.
"""

from __future__ import annotations

import contextlib
import copy
import time
from typing import Sequence

import numpy as np
import torch

from yolotune.engine.cuda_graph import CudaGraphCache
from yolotune.io.decode import DecodedImage
from yolotune.io.nvdec import NV12Picture, is_nv12
from yolotune.ops.color import i420_to_nv12, i420_to_rgb, is_i420, nv12_to_rgb
from yolotune.ops.letterbox import letterbox_batch
from yolotune.pipeline.buffers import Batch, FrameBuffers, copy_all, frame_layout, host_tensor, is_page_locked, picture_hw
from yolotune.pipeline.stages import BatchStages
from yolotune.types import Detections, InputRef

UPLOAD_MODES = ("pinned", "pageable")


class FramePath:
    """Detection on frames the caller holds; owns the one-graph buffers of each (owner, bucket, size, layout)."""

    def __init__(self, stages: BatchStages):
        self.stages = stages
        self._step = CudaGraphCache(self._frame_step, stages.graph_modules) if stages.uses_cuda_graph else None
        self.buffers: dict[tuple, FrameBuffers] = {}
        # the one-graph path: on CUDA with graphs and device preprocessing (a test may turn it on elsewhere)
        self.one_graph = self._step is not None and stages.preprocess == "gpu"
        self.upload_mode = "pinned"  # see upload()
        self.busy = lambda: False  # set by the Detector: whether predict() holds the slots

    def _frame_step(self, fb_frames, fb_inputs, fb_geometry, fb_host_dets, fb_host_counts):
        """In-memory frames in one graph: (I420 or NV12 -> RGB,) letterbox, model, NMS, D2H into pinned memory (all
        static buffers). I420 frames are [B, h * 3 / 2, w], NV12 ones [B, h * 3 / 2, w / 2, 2], RGB ones [B, h, w, 3]."""
        if fb_frames.ndim == 3:
            rgb = i420_to_rgb(fb_frames)
        elif fb_frames.shape[-1] == 2:
            rgb = nv12_to_rgb(fb_frames.flatten(2))
        else:
            rgb = fb_frames.permute(0, 3, 1, 2)
        letterbox_batch(list(rgb), fb_inputs)
        dets, counts = self.stages.detect_step(fb_inputs, fb_geometry)
        fb_host_dets.copy_(dets, non_blocking=True)
        fb_host_counts.copy_(counts, non_blocking=True)
        return dets, counts

    # ------------------------------------------------------------------------------------------ detect
    @torch.inference_mode()
    def detect(self, frames: Sequence[np.ndarray | torch.Tensor]) -> list[Detections]:
        s = self.stages
        out: list[Detections] = []
        stream_ctx = torch.cuda.stream(s.compute_stream) if s.compute_stream is not None else contextlib.nullcontext()
        with stream_ctx:
            for start in range(0, len(frames), s.batch):
                chunk = frames[start : start + s.batch]
                layout = frame_layout(chunk) if self.one_graph else None
                if layout is not None:
                    out.extend(self._detect_in_one_graph(chunk, start, layout))
                    continue
                if any(is_i420(f) or is_nv12(f) for f in chunk):
                    chunk = self._rgb_from_i420(chunk)  # on the compute stream, ahead of the batch that reads them
                images = [DecodedImage(InputRef(f"<frame {start + i}>"), self._to_device(f)) for i, f in enumerate(chunk)]
                slot = s.direct_slot
                batch = Batch(list(range(len(images))), images, slot, s.bucket(len(images)))
                s.letterbox_into(slot, images, batch.bucket)
                if slot.ready is not None:
                    slot.ready.record(s.compute_stream)
                s.launch(batch)
                out.extend(s.collect(batch))  # type: ignore[arg-type]
        return out

    def submit(self, frames: Sequence[np.ndarray | torch.Tensor], slot: int) -> Batch:
        s = self.stages
        if len(frames) > s.batch:
            raise ValueError(f"{len(frames)} frames submitted; this Detector's batch is {s.batch}")
        if self.busy():
            raise RuntimeError("predict() is running on this Detector; submit_frames() needs its slots")
        layout = frame_layout(frames) if self.one_graph else None
        if layout is not None:
            return self._submit_in_one_graph(frames, slot, layout)
        target = s.slots[slot]
        stream_ctx = torch.cuda.stream(s.decode_stream) if s.decode_stream is not None else contextlib.nullcontext()
        with stream_ctx:
            if any(is_i420(f) or is_nv12(f) for f in frames):
                frames = self._rgb_from_i420(frames)
            images = [DecodedImage(InputRef(f"<frame {i}>"), self._to_device(f)) for i, f in enumerate(frames)]
            batch = Batch(list(range(len(images))), images, target, s.bucket(len(images)))
            s.letterbox_into(target, images, batch.bucket)
            if target.ready is not None:
                target.ready.record(s.decode_stream)
        s.launch(batch)
        return batch

    def prepare(self, hw: tuple[int, int], layout: str = "i420") -> float:
        s = self.stages
        if not self.one_graph:
            return 0.0
        # not under inference_mode: the buffers made here are written later by uploads outside it
        t0 = time.perf_counter()
        stats, timings = dict(s.stats), copy.deepcopy(s.timings)  # blank frames are not work done
        h, w = hw
        if layout == "nv12":
            blank = NV12Picture(torch.zeros((h * 3 // 2, w), dtype=torch.uint8, device=s.device))
        else:
            blank = np.zeros((h * 3 // 2, w) if layout == "i420" else (h, w, 3), np.uint8)
        for b in s.buckets:
            pending = [self._submit_in_one_graph([blank] * b, slot, layout) for slot in (0, 1)]
            for batch in pending:
                s.collect(batch)
        s.stats.update(stats)
        s.timings.clear()
        s.timings.update(timings)
        return time.perf_counter() - t0

    # ------------------------------------------------------------------------------------------ one graph
    def buffers_for(self, owner, frames: Sequence[np.ndarray], layout: str) -> FrameBuffers:
        """The static buffers (and graph) of ``owner`` ("direct" for detect(), 0 or 1 for submit's slots) for this
        many frames of this shape and layout."""
        s = self.stages
        hw = picture_hw(frames[0], layout)
        bucket = s.bucket(len(frames))
        key = (owner, bucket, *hw, layout)
        fb = self.buffers.get(key)
        if fb is None:
            slot = s.direct_slot if owner == "direct" else s.slots[owner]
            fb = self.buffers[key] = FrameBuffers(bucket, hw, s.canvas_for([hw]), slot, s.device, layout)
        return fb

    def _run_step(self, fb: FrameBuffers) -> None:
        """Replay the buffers' graph on the current stream (captured the first time); without CUDA graphs, run the
        step itself (the same code, so the CPU tests cover it)."""
        if isinstance(self._step, CudaGraphCache):
            if fb.graph is None:
                fb.graph, _ = self._step.graph_for(*fb.static_tensors)
            fb.graph.replay()
        else:
            self._frame_step(*fb.static_tensors)

    def _submit_in_one_graph(self, frames: Sequence[np.ndarray], slot: int, layout: str) -> Batch:
        """Upload on the decode stream, then the whole step as one graph on the compute stream; collect() waits for
        ``fb.done``. The slot's staging is reused only after collect(), so its previous upload has finished."""
        s = self.stages
        fb = self.buffers_for(slot, frames, layout)
        cuda = s.compute_stream is not None
        with s.timer("submit"):
            with torch.cuda.stream(s.decode_stream) if cuda else contextlib.nullcontext():
                self.upload(frames, fb)
                if cuda:
                    fb.ready.record(s.decode_stream)
            with torch.cuda.stream(s.compute_stream) if cuda else contextlib.nullcontext(), torch.inference_mode():
                if cuda:
                    s.compute_stream.wait_event(fb.ready)
                self._run_step(fb)
                if cuda:
                    fb.done.record(s.compute_stream)
        hw = picture_hw(frames[0], layout)
        shape_only = torch.empty((3, *hw), device="meta")  # results need each picture's size, not its pixels
        images = [DecodedImage(InputRef(f"<frame {i}>"), shape_only) for i in range(len(frames))]
        return Batch(list(range(len(frames))), images, fb, fb.inputs.shape[0])  # type: ignore[arg-type]

    def _detect_in_one_graph(self, frames: Sequence[np.ndarray], start: int, layout: str = "rgb") -> list[Detections]:
        s = self.stages
        hw = picture_hw(frames[0], layout)
        fb = self.buffers_for("direct", frames, layout)
        self.upload(frames, fb)
        self._run_step(fb)
        if s.compute_stream is not None:
            s.compute_stream.synchronize()
        dets, counts = fb.host_dets.numpy(), fb.host_counts.numpy()
        return [
            Detections(InputRef(f"<frame {start + i}>"), hw, d[:c, :4].copy(), d[:c, 4].copy(), d[:c, 5].astype(np.int64),
                       s.names)
            for i, (d, c) in enumerate(zip(dets[: len(frames)], counts[: len(frames)]))
        ]

    def upload(self, frames: Sequence[np.ndarray], fb: FrameBuffers, chunks: int = 4) -> None:
        """Host frames -> device frame buffer, on the current stream.

        "pinned" (default): row chunks are copied into pinned staging by torch's multi-threaded CPU copy, and each
        chunk's DMA starts while the next chunk is copied. "pageable": one synchronous copy straight from the
        user's memory (the driver stages it at the single-thread memcpy rate; benchmarks/e2e.py compares them).
        """
        if fb.layout == "nv12":
            self._upload_nv12(frames, fb)
            return
        if self.upload_mode == "pinned":
            direct: tuple[list, list] = ([], [])
            for i, f in enumerate(frames):
                src = host_tensor(f)
                if self.stages.device.type == "cuda" and is_page_locked(f):
                    # already page-locked (a decoder process's registered ring): DMA straight from it, no host copy;
                    # the caller keeps the frame's memory untouched until collect() (serve/runtime.py does)
                    direct[0].append(fb.frames[i])
                    direct[1].append(src)
                    continue
                h = src.shape[0]
                step = -(-h // chunks)
                for r in range(0, h, step):
                    fb.staging[i, r : r + step].copy_(src[r : r + step])
                    fb.frames[i, r : r + step].copy_(fb.staging[i, r : r + step], non_blocking=True)
            copy_all(*direct)
        else:
            for i, f in enumerate(frames):
                fb.frames[i].copy_(host_tensor(f))

    def _upload_nv12(self, frames: Sequence, fb: FrameBuffers) -> None:
        """NVDEC's frames device to device (ready to read: io/nvdec.py); I420 host frames decoded on the CPU beside
        them uploaded, then their chroma planes interleaved into NV12."""
        rows, w = fb.frames.shape[1], fb.frames.shape[2] * 2
        device = fb.frames.device
        nv12 = [i for i, f in enumerate(frames) if is_nv12(f)]
        copy_all([fb.frames[i] for i in nv12], [frames[i].planes.view(rows, w // 2, 2).to(device) for i in nv12])
        host = [i for i, f in enumerate(frames) if not is_nv12(f)]
        if host:
            # staged in buffers made once (pinning memory per batch is a driver call that cost ~1 ms a frame,
            # benchmarks/results/serve/nvdec_streams_h100.json); reused after collect(), as the I420 staging is
            if fb.i420_staging is None:
                fb.i420_staging = torch.empty((fb.frames.shape[0], rows, w), dtype=torch.uint8,
                                              pin_memory=device.type == "cuda")
            staged = fb.i420_staging[: len(host)]
            copy_all(list(staged), [host_tensor(frames[i]) for i in host])
            planes = staged.to(device, non_blocking=True) if device.type == "cuda" else staged
            for i, converted in zip(host, i420_to_nv12(planes)):
                fb.frames[i].copy_(converted.view(rows, w // 2, 2))

    # ------------------------------------------------------------------------------------------ per image
    def _rgb_from_i420(self, frames: Sequence) -> list:
        """I420 and NV12 frames -> [3, h, w] RGB tensors where preprocessing runs (one upload and conversion per I420
        frame size)."""
        s = self.stages
        out = list(frames)
        target = s.device if s.preprocess == "gpu" else torch.device("cpu")
        groups: dict[tuple, list[int]] = {}
        for i, f in enumerate(frames):
            if is_nv12(f):  # on the device already (NVDEC)
                out[i] = nv12_to_rgb(f.planes[None])[0].to(target)
            elif is_i420(f):
                groups.setdefault(tuple(f.shape), []).append(i)
        for idx in groups.values():
            planes = torch.stack([host_tensor(frames[i]) if isinstance(frames[i], np.ndarray) else frames[i] for i in idx])
            if planes.device.type == "cpu" and target.type == "cuda":
                planes = planes.pin_memory().to(target, non_blocking=True)
            planes = planes.to(target)
            for i, rgb in zip(idx, i420_to_rgb(planes)):
                out[i] = rgb
        return out

    def _to_device(self, frame: np.ndarray | torch.Tensor) -> torch.Tensor:
        s = self.stages
        t = host_tensor(np.ascontiguousarray(frame)).permute(2, 0, 1) if isinstance(frame, np.ndarray) else frame
        if s.preprocess == "cpu":
            return t.cpu()
        if t.device.type == "cpu" and s.device.type == "cuda":
            return t.pin_memory().to(s.device, non_blocking=True)
        return t.to(s.device)
