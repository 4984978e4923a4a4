"""Detector: sources -> decode -> preprocess -> engine -> postprocess -> results, batched and overlapped.

Overlap on CUDA: a producer thread reads, decodes (nvJPEG / Pillow threads) and letterboxes batch i+1 on its own
CUDA stream into one of two input slots, while the main thread replays batch i's CUDA graph (model + NMS) on the
compute stream and copies [B, max_det, 6] + [B] back to the slot's pinned buffers. A slot returns to the producer
once its results have been read on the host, so two batches are in flight and memory stays bounded.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from yolotune.engine import PRECISIONS, build_engine
from yolotune.engine.cuda_graph import CudaGraphCache
from yolotune.io.decode import DecodedImage, ImageDecoder
from yolotune.io.sources import SourceList, expand_sources
from yolotune.io.video import video_frame_count
from yolotune.models import LoadedModel, load_model
from yolotune.ops.color import i420_to_rgb, is_i420
from yolotune.ops.letterbox import canvas_shape, geometry_tensor, letterbox_batch
from yolotune.ops.nms import NMS_BACKENDS, triton_available
from yolotune.ops.postprocess import PostprocessConfig, postprocess
from yolotune.pipeline.buffers import (Batch, FrameBuffers, Slot, copy_all, frame_layout, host_tensor, is_page_locked,
                                      picture_hw)
from yolotune.pipeline.producer import BatchProducer
from yolotune.tune.artifact import accepts_artifacts
from yolotune.types import Detections, ErrorRecord, InputRef, Result, StageTiming

DEFAULT_CONF = 0.25  # the confidence threshold detections are kept at unless the caller says otherwise
_MAX_CANVASES = 8  # distinct rect canvases before new shapes fall back to the square canvas (bounds graph count)
_MAX_COMPILED_CANVASES = 2  # the same for compiled engines: each canvas is one more compile


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto' (CUDA if visible, else CPU), 'cpu', 'cuda', 'cuda:N' or a bare GPU index 'N'."""
    text = "cuda" if (device is None or str(device) == "auto") and torch.cuda.is_available() else str(device or "cpu")
    text = "cpu" if text == "auto" else text
    d = torch.device(f"cuda:{text}" if text.isdigit() else text)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {text!r} asked for, but no CUDA GPU is visible; use --device cpu")
    if d.type == "cuda" and d.index is None:  # "cuda" != "cuda:0" for torch.device: tensors always carry the index
        d = torch.device("cuda", torch.cuda.current_device())
    return d


class Detector:
    """YOLO detection on files, videos or in-memory frames, as fast as the device allows.

    >>> det = Detector("yolov8n.pt", device="cuda", batch=32)
    >>> for result in det.predict(["images/"]):
    ...     print(result.to_dict())
    """

    @accepts_artifacts
    def __init__(
        self,
        model: str | Path | LoadedModel,
        device: str | torch.device | None = "auto",
        half: bool | None = None,
        precision: str | None = None,
        batch: int = 16,
        imgsz: int | tuple[int, int] | None = None,
        conf: float = DEFAULT_CONF,
        iou: float = 0.7,
        max_det: int = 300,
        topk: int = 2048,
        agnostic: bool = False,
        nms: str = "auto",
        rect: bool | None = None,
        cuda_graph: bool = True,
        compile: bool | str = False,
        fuse: bool = True,
        cudnn_benchmark: bool | None = None,
        gpu_decode: bool = True,
        preprocess: str = "auto",
        workers: int | None = None,
        return_images: bool = False,
        max_image_pixels: int | None = None,
        **model_options,
    ):
        self.device = resolve_device(device)
        self.model = load_model(model, **model_options)
        spec = self.model.spec
        if precision is None:
            precision = "fp32" if (half is False or self.device.type == "cpu") else "fp16"
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, not {precision!r}")
        self.engine = build_engine(self.model, self.device, precision, compile=compile, fuse=fuse)
        if cudnn_benchmark is not None and self.engine.device.type == "cuda":
            # cuDNN's autotuning of each convolution shape at the first call (process-wide; engines default to on,
            # YOLOTUNE_CUDNN_BENCHMARK=0 turns it off): an artifact says which measured better (tune/search.py)
            torch.backends.cudnn.benchmark = bool(cudnn_benchmark)
        self.device = self.engine.device  # an ONNX Runtime CPU engine keeps preprocessing on the CPU too
        self.batch = max(1, int(batch))
        self.stride = spec.stride
        self.imgsz = self._check_imgsz(imgsz if imgsz is not None else spec.imgsz)
        # rect (minimal padding per same-size batch) is the default, except for compiled engines, where each new
        # canvas costs a compile (~30 s): they take the square canvas unless asked, and then hold at most
        # _MAX_COMPILED_CANVASES canvases (a stream of 720p frames needs one, 384x640: 40% fewer pixels)
        self.rect = (not self.engine.static_canvas if rect is None else rect) and self.engine.fixed_hw is None
        self._max_canvases = _MAX_COMPILED_CANVASES if self.engine.static_canvas else _MAX_CANVASES
        self.post = PostprocessConfig(
            layout=spec.layout, conf=conf, iou=iou, max_det=max_det, topk=topk, agnostic=agnostic, nms_backend=nms
        )
        if nms not in NMS_BACKENDS:
            raise ValueError(f"nms must be one of {NMS_BACKENDS}, not {nms!r}")
        if preprocess not in ("auto", "gpu", "cpu"):
            raise ValueError(f"preprocess must be auto, gpu or cpu, not {preprocess!r}")
        # "cpu": decode with Pillow and letterbox with OpenCV in CPU threads (bit-identical to Ultralytics' inputs);
        # the GPU then only runs the model and NMS. "gpu": nvJPEG decode and batched letterbox on the device.
        self.preprocess = "cpu" if preprocess == "cpu" or self.device.type == "cpu" else "gpu"
        decode_device = self.device if self.preprocess == "gpu" else torch.device("cpu")
        # max_image_pixels: the largest picture decoded (None: Pillow's 89.5-megapixel bomb limit; 0: no limit)
        self.decoder = ImageDecoder(decode_device, workers=workers, gpu_decode=gpu_decode, keep_host=return_images,
                                    max_pixels=max_image_pixels)
        self.return_images = return_images
        cuda = self.device.type == "cuda"
        # The graph holds NMS too, which needs the fixed-shape Triton kernels (torchvision's NMS is dynamic).
        self.uses_cuda_graph = (cuda and cuda_graph and self.engine.graph_capturable and triton_available()
                                and nms in ("auto", "triton"))
        modules = [getattr(self.engine, "module")] if self.uses_cuda_graph else []
        self._step = CudaGraphCache(self._detect_step, modules) if self.uses_cuda_graph else self._detect_step
        self._frame_step = CudaGraphCache(self._frame_detect_step, modules) if self.uses_cuda_graph else None
        self._frame_buffers: dict[tuple, FrameBuffers] = {}
        # Same-size host frames (RGB or I420) go through one graph: upload, colour conversion, letterbox, model, NMS.
        self._frame_path = self._frame_step is not None and self.preprocess == "gpu"
        self.frame_upload = "pinned"
        smallest = min(self.engine.min_batch, self.batch)  # below it, batches are padded
        self.buckets = sorted({self.batch} | {1 << i for i in range(self.batch.bit_length()) if smallest <= (1 << i) < self.batch})
        make_slot = lambda: Slot(self.batch, max_det, self.device, self.engine.input_dtype, self.engine.channels_last)  # noqa: E731
        self._slots = [make_slot(), make_slot()]
        self._direct_slot = make_slot()  # used by detect(): its own buffers, so it never races predict()
        self._canvases: set[tuple[int, int]] = set()
        self.decode_stream = torch.cuda.Stream(self.device) if cuda else None
        self.compute_stream = torch.cuda.Stream(self.device) if cuda else None
        self._busy = threading.Lock()
        self._timing_lock = threading.Lock()
        self.timings: dict[str, StageTiming] = {}
        self.stats = {"inputs": 0, "ok": 0, "errors": 0, "seconds": 0.0}
        self.autotune_batches = {self.batch}  # see _cudnn_autotuning
        # a compiled artifact: its saved function loads while cuDNN tunes the full batch's convolutions (a rect
        # canvas is known only from the first batch)
        self.warm_started = not self.rect and self.engine.warm_start(self.batch, self.imgsz)

    # ----------------------------------------------------------------------------------------------- config
    @property
    def names(self) -> dict[int, str]:
        return self.model.spec.names

    def _check_imgsz(self, imgsz) -> tuple[int, int]:
        if self.engine.fixed_hw is not None:
            return self.engine.fixed_hw
        h, w = (imgsz, imgsz) if isinstance(imgsz, int) else (int(imgsz[0]), int(imgsz[1]))
        s = self.stride
        return (max(s, -(-h // s) * s), max(s, -(-w // s) * s))  # round up to a multiple of the stride

    def describe(self) -> dict:
        return {
            "model": self.model.spec.path,
            "layout": self.model.spec.layout,
            "classes": self.model.spec.num_classes,
            **self.engine.describe(),
            "cuda_graph": self.uses_cuda_graph,
            "compile": getattr(self.engine, "compile_mode", None) or False,
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark) if self.device.type == "cuda" else None,
            "batch": self.batch,
            "imgsz": list(self.imgsz),
            "rect": self.rect,
            "conf": self.post.conf,
            "iou": self.post.iou,
            "max_det": self.post.max_det,
            "nms": self.post.nms_backend,
            "gpu_decode": self.decoder.gpu_decode,
            "preprocess": self.preprocess,
        }

    def _detect_step(self, x: torch.Tensor, geometry: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self._cudnn_autotuning(x.shape[0]):
            raw = self.engine(x)
        return postprocess(raw, geometry, self.post)

    @contextlib.contextmanager
    def _cudnn_autotuning(self, batch: int):
        """cuDNN autotunes only the batch sizes in ``autotune_batches`` (the Detector's own batch): a smaller, padded
        bucket takes cuDNN's heuristics instead of stalling 1-2.5 s on the H100 to tune one more shape at its
        first call (4 frames first, a stream's partial batch). The autotuner's gain is at the batch that runs
        most (+4.5% at batch 128; at batch 1 the heuristics were 5% faster). The flag is process-wide and read
        when a convolution is called, so only at a CUDA graph's warm-up and capture."""
        if self.device.type != "cuda" or batch in self.autotune_batches or not torch.backends.cudnn.benchmark:
            yield
            return
        torch.backends.cudnn.benchmark = False
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = True

    def _frame_detect_step(self, fb_frames, fb_inputs, fb_geometry, fb_host_dets, fb_host_counts):
        """In-memory frames in one graph: (I420 -> RGB,) letterbox, model, NMS, D2H into pinned memory (all static
        buffers). I420 frames are [B, h * 3 / 2, w], RGB ones [B, h, w, 3]."""
        rgb = i420_to_rgb(fb_frames) if fb_frames.ndim == 3 else fb_frames.permute(0, 3, 1, 2)
        letterbox_batch(list(rgb), fb_inputs)
        dets, counts = self._detect_step(fb_inputs, fb_geometry)
        fb_host_dets.copy_(dets, non_blocking=True)
        fb_host_counts.copy_(counts, non_blocking=True)
        return dets, counts

    def bucket(self, n: int) -> int:
        """Smallest captured batch size that holds ``n`` images (a partial batch runs padded in it)."""
        return next(b for b in self.buckets if b >= n)

    def _canvas(self, hws: list[tuple[int, int]]) -> tuple[int, int]:
        canvas = canvas_shape(hws, self.imgsz, self.stride, self.rect)
        if canvas not in self._canvases:
            if len(self._canvases) >= self._max_canvases:
                return self.imgsz
            self._canvases.add(canvas)
        return canvas

    @contextlib.contextmanager
    def timer(self, stage: str):
        """Adds the wall time of the block to ``timings[stage]`` (safe from the producer thread too)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            with self._timing_lock:
                self.timings.setdefault(stage, StageTiming(stage)).add(time.perf_counter() - t0)

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
        producer = BatchProducer(self, source_list, self._slots)
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

    def letterbox_into(self, slot: Slot, images: list[DecodedImage], bucket: int) -> None:
        """Write ``images`` into the slot's input buffer (and their geometry), on the current stream."""
        canvas = self._canvas([im.hw for im in images])
        buf = slot.input(canvas)
        n = len(images)
        if self.preprocess == "cpu" and self.device.type == "cuda":
            host, device_u8 = slot.host_input(canvas)
            geometries = letterbox_batch([im.tensor for im in images], host[:n])
            device_u8[:n].copy_(host[:n], non_blocking=True)
            buf[:n].copy_(device_u8[:n]).mul_(1.0 / 255.0)
        else:
            geometries = letterbox_batch([im.tensor for im in images], buf[:n])
        slot.geometry[:bucket].copy_(geometry_tensor(geometries, bucket, self.device))
        slot.canvas = canvas

    def launch(self, batch: Batch) -> None:
        """Enqueue model + NMS for the batch in its slot and the copy of results to pinned memory."""
        slot = batch.slot
        if slot is None:
            return
        x = slot.inputs[slot.canvas][: batch.bucket]
        g = slot.geometry[: batch.bucket]
        with self.timer("launch"):
            if self.compute_stream is None:
                with torch.inference_mode():
                    dets, counts = self._step(x, g)
                slot.host_dets[: batch.bucket].copy_(dets)
                slot.host_counts[: batch.bucket].copy_(counts)
            else:
                with torch.cuda.stream(self.compute_stream), torch.inference_mode():
                    self.compute_stream.wait_event(slot.ready)
                    dets, counts = self._step(x, g)
                    slot.host_dets[: batch.bucket].copy_(dets, non_blocking=True)
                    slot.host_counts[: batch.bucket].copy_(counts, non_blocking=True)
                    slot.done.record(self.compute_stream)

    def collect(self, batch: Batch, release=None) -> list[Result]:
        """Wait for the batch's results, hand its slot back (``release``), and build one result per input."""
        with self.timer("wait+collect"):
            return self._collect(batch, release)

    def _collect(self, batch: Batch, release) -> list[Result]:
        slot = batch.slot
        dets = counts = None
        if slot is not None:
            if slot.done is not None:
                slot.done.synchronize()
            n = len(batch.images)
            dets = slot.host_dets[:n].numpy().copy()
            counts = slot.host_counts[:n].numpy().copy()
            if release is not None:
                release(slot)
        results: list[Result] = []
        for entry in batch.order:
            if isinstance(entry, ErrorRecord):
                results.append(entry)
                continue
            im = batch.images[entry]
            d = dets[entry, : counts[entry]]
            results.append(
                Detections(im.ref, im.hw, d[:, :4], d[:, 4], d[:, 5].astype(np.int64), self.names, image=im.host)
            )
        n_err = sum(isinstance(r, ErrorRecord) for r in results)
        self.stats["inputs"] += len(results)
        self.stats["errors"] += n_err
        self.stats["ok"] += len(results) - n_err
        return results

    # ------------------------------------------------------------------------------------------- direct
    @torch.inference_mode()
    def detect(self, frames: Sequence[np.ndarray | torch.Tensor]) -> list[Detections]:
        """Synchronous detection on in-memory frames ([h, w, 3] uint8 RGB arrays or [3, h, w] uint8 tensors).

        The low-latency path: no threads, one stream; host frame in, host boxes out. Frames may also be I420 planes
        ([h * 3 / 2, w] uint8, as PyAV decodes them): converted to RGB on the device, half the bytes to upload.
        """
        out: list[Detections] = []
        stream_ctx = torch.cuda.stream(self.compute_stream) if self.compute_stream is not None else contextlib.nullcontext()
        with stream_ctx:
            for start in range(0, len(frames), self.batch):
                chunk = frames[start : start + self.batch]
                layout = frame_layout(chunk) if self._frame_path else None
                if layout is not None:
                    out.extend(self._detect_frames_in_one_graph(chunk, start, layout))
                    continue
                if any(is_i420(f) for f in chunk):
                    chunk = self._rgb_from_i420(chunk)  # on the compute stream, ahead of the batch that reads them
                images = [DecodedImage(InputRef(f"<frame {start + i}>"), self._to_device(f)) for i, f in enumerate(chunk)]
                slot = self._direct_slot
                batch = Batch(list(range(len(images))), images, slot, self.bucket(len(images)))
                self.letterbox_into(slot, images, batch.bucket)
                if slot.ready is not None:
                    slot.ready.record(self.compute_stream)
                self.launch(batch)
                out.extend(self.collect(batch))  # type: ignore[arg-type]
        return out

    def submit_frames(self, frames: Sequence[np.ndarray | torch.Tensor], slot: int) -> Batch:
        """Start detection of up to ``batch`` in-memory frames in slot 0 or 1 and return without waiting.

        Upload, colour conversion and letterbox run on the decode stream, model + NMS on the compute stream, so one
        slot's batch can be prepared while the other's computes. ``collect(batch)`` waits for the results; a slot
        must be collected before it is submitted again. Not for use while ``predict()`` runs (it owns the slots).
        """
        if len(frames) > self.batch:
            raise ValueError(f"{len(frames)} frames submitted; this Detector's batch is {self.batch}")
        if self._busy.locked():
            raise RuntimeError("predict() is running on this Detector; submit_frames() needs its slots")
        layout = frame_layout(frames) if self._frame_path else None
        if layout is not None:
            return self._submit_frames_in_one_graph(frames, slot, layout)
        target = self._slots[slot]
        stream_ctx = torch.cuda.stream(self.decode_stream) if self.decode_stream is not None else contextlib.nullcontext()
        with stream_ctx:
            if any(is_i420(f) for f in frames):
                frames = self._rgb_from_i420(frames)
            images = [DecodedImage(InputRef(f"<frame {i}>"), self._to_device(f)) for i, f in enumerate(frames)]
            batch = Batch(list(range(len(images))), images, target, self.bucket(len(images)))
            self.letterbox_into(target, images, batch.bucket)
            if target.ready is not None:
                target.ready.record(self.decode_stream)
        self.launch(batch)
        return batch

    def prepare_frames(self, hw: tuple[int, int], layout: str = "i420") -> float:
        """Capture the one-graph path of every batch size for ``hw`` (height, width) pictures in ``layout``, for
        submit_frames' two slots, before any frame comes: a stream run would otherwise stall at each new batch size
        while its sources' clocks run (14 captures for batch 64). Returns the seconds it took; 0 without that path."""
        if not self._frame_path:
            return 0.0
        # not under inference_mode: the buffers made here are written later by uploads outside it
        t0 = time.perf_counter()
        stats, timings = dict(self.stats), copy.deepcopy(self.timings)  # blank frames are not work done
        h, w = hw
        blank = np.zeros((h * 3 // 2, w) if layout == "i420" else (h, w, 3), np.uint8)
        for b in self.buckets:
            pending = [self._submit_frames_in_one_graph([blank] * b, slot, layout) for slot in (0, 1)]
            for batch in pending:
                self.collect(batch)
        self.stats.update(stats)
        self.timings.clear()
        self.timings.update(timings)
        return time.perf_counter() - t0

    def _frame_buffers_for(self, owner, frames: Sequence[np.ndarray], layout: str) -> FrameBuffers:
        """The static buffers (and graph) of ``owner`` ("direct" for detect(), 0 or 1 for submit_frames' slots) for
        this many frames of this shape and layout."""
        hw = picture_hw(frames[0], layout)
        bucket = self.bucket(len(frames))
        key = (owner, bucket, *hw, layout)
        fb = self._frame_buffers.get(key)
        if fb is None:
            slot = self._direct_slot if owner == "direct" else self._slots[owner]
            fb = self._frame_buffers[key] = FrameBuffers(bucket, hw, self._canvas([hw]), slot, self.device, layout)
        return fb

    def _run_frame_step(self, fb: FrameBuffers) -> None:
        """Replay the buffers' graph on the current stream (captured the first time); without CUDA graphs, run the
        step itself (the same code, so the CPU tests cover it)."""
        if isinstance(self._frame_step, CudaGraphCache):
            if fb.graph is None:
                fb.graph, _ = self._frame_step.graph_for(*fb.static_tensors)
            fb.graph.replay()
        else:
            self._frame_detect_step(*fb.static_tensors)

    def _submit_frames_in_one_graph(self, frames: Sequence[np.ndarray], slot: int, layout: str) -> Batch:
        """Upload on the decode stream, then the whole step as one graph on the compute stream; collect() waits for
        ``fb.done``. The slot's staging is reused only after collect(), so its previous upload has finished."""
        fb = self._frame_buffers_for(slot, frames, layout)
        cuda = self.compute_stream is not None
        with self.timer("submit"):
            with torch.cuda.stream(self.decode_stream) if cuda else contextlib.nullcontext():
                self._upload_frames(frames, fb)
                if cuda:
                    fb.ready.record(self.decode_stream)
            with torch.cuda.stream(self.compute_stream) if cuda else contextlib.nullcontext(), torch.inference_mode():
                if cuda:
                    self.compute_stream.wait_event(fb.ready)
                self._run_frame_step(fb)
                if cuda:
                    fb.done.record(self.compute_stream)
        hw = picture_hw(frames[0], layout)
        shape_only = torch.empty((3, *hw), device="meta")  # results need each picture's size, not its pixels
        images = [DecodedImage(InputRef(f"<frame {i}>"), shape_only) for i in range(len(frames))]
        return Batch(list(range(len(frames))), images, fb, fb.inputs.shape[0])  # type: ignore[arg-type]

    def _detect_frames_in_one_graph(self, frames: Sequence[np.ndarray], start: int, layout: str = "rgb") -> list[Detections]:
        hw = picture_hw(frames[0], layout)
        fb = self._frame_buffers_for("direct", frames, layout)
        self._upload_frames(frames, fb)
        self._run_frame_step(fb)
        if self.compute_stream is not None:
            self.compute_stream.synchronize()
        dets, counts = fb.host_dets.numpy(), fb.host_counts.numpy()
        names = self.names
        return [
            Detections(InputRef(f"<frame {start + i}>"), hw, d[:c, :4].copy(), d[:c, 4].copy(), d[:c, 5].astype(np.int64), names)
            for i, (d, c) in enumerate(zip(dets[: len(frames)], counts[: len(frames)]))
        ]

    def _upload_frames(self, frames: Sequence[np.ndarray], fb: FrameBuffers, chunks: int = 4) -> None:
        """Host frames -> device frame buffer, on the current stream.

        "pinned" (default): row chunks are copied into pinned staging by torch's multi-threaded CPU copy, and each
        chunk's DMA starts while the next chunk is copied. "pageable": one synchronous copy straight from the
        user's memory (the driver stages it; about 7 GB/s on the H100 machine, the single-thread memcpy rate).
        """
        if self.frame_upload == "pinned":
            direct: tuple[list, list] = ([], [])
            for i, f in enumerate(frames):
                src = host_tensor(f)
                if self.device.type == "cuda" and is_page_locked(f):
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

    def _rgb_from_i420(self, frames: Sequence) -> list:
        """I420 frames -> [3, h, w] RGB tensors where preprocessing runs (one upload and conversion per frame size)."""
        out = list(frames)
        target = self.device if self.preprocess == "gpu" else torch.device("cpu")
        groups: dict[tuple, list[int]] = {}
        for i, f in enumerate(frames):
            if is_i420(f):
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
        t = host_tensor(np.ascontiguousarray(frame)).permute(2, 0, 1) if isinstance(frame, np.ndarray) else frame
        if self.preprocess == "cpu":
            return t.cpu()
        if t.device.type == "cpu" and self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def close(self) -> None:
        self.decoder.close()

    def __enter__(self) -> "Detector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
