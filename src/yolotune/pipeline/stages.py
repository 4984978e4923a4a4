"""BatchStages: what every batch goes through, whichever way it came in (files, in-memory frames, a profiler).

decode (the ImageDecoder) -> letterbox into a slot's static input -> launch (model + NMS, one CUDA graph per batch
bucket) -> collect (wait, copy out, one Detections or ErrorRecord per input). The file pipeline (``predict``), the
in-memory frame path (``frames.py``) and the profiler's serialised run (``profile/staged.py``) all call these.
"""

from __future__ import annotations

import contextlib
import threading
import time

import numpy as np
import torch

from yolotune.engine import PRECISIONS, build_engine
from yolotune.engine.cuda_graph import CudaGraphCache
from yolotune.io.decode import DecodedImage, ImageDecoder
from yolotune.io.nvdec import video_decoder_for
from yolotune.models import LoadedModel
from yolotune.ops.letterbox import canvas_shape, geometry_tensor, letterbox_batch
from yolotune.ops.nms import triton_available
from yolotune.ops.postprocess import PostprocessConfig, postprocess
from yolotune.options import DetectorOptions
from yolotune.pipeline.buffers import Batch, Slot
from yolotune.types import Detections, ErrorRecord, Result, StageTiming

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


class BatchStages:
    """The engine, decoder, NMS settings and static buffers of one pipeline, and the per-batch steps on them."""

    def __init__(self, model: LoadedModel, options: DetectorOptions):
        self.options = options
        self.model = model
        device = resolve_device(options.device)
        spec = model.spec
        precision = options.precision
        if precision is None:
            precision = "fp32" if (options.half is False or device.type == "cpu") else "fp16"
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, not {precision!r}")
        self.engine = build_engine(model, device, precision, compile=options.compile, fuse=options.fuse,
                                   runtime=options.runtime)
        if options.cudnn_benchmark is not None and self.engine.device.type == "cuda":
            # cuDNN's autotuning of each convolution shape at the first call (process-wide; engines default to on,
            # YOLOTUNE_CUDNN_BENCHMARK=0 turns it off): an artifact says which measured better (tune/search.py)
            torch.backends.cudnn.benchmark = bool(options.cudnn_benchmark)
        self.device = self.engine.device  # an ONNX Runtime CPU engine keeps preprocessing on the CPU too
        self.batch = options.batch
        self.stride = spec.stride
        self.imgsz = self._check_imgsz(options.imgsz if options.imgsz is not None else spec.imgsz)
        # rect (minimal padding per same-size batch) is the default, except for compiled engines, where each new
        # canvas costs a compile: they take the square canvas unless asked, and then hold at most
        # _MAX_COMPILED_CANVASES canvases (a stream of 720p frames needs one, 384x640: 40% fewer pixels)
        rect = options.rect
        self.rect = (not self.engine.static_canvas if rect is None else rect) and self.engine.fixed_hw is None
        self._max_canvases = _MAX_COMPILED_CANVASES if self.engine.static_canvas else _MAX_CANVASES
        self.post = PostprocessConfig(layout=spec.layout, conf=options.conf, iou=options.iou, max_det=options.max_det,
                                      topk=options.topk, agnostic=options.agnostic, nms_backend=options.nms)
        # "cpu": decode with Pillow and letterbox with OpenCV in CPU threads (bit-identical to Ultralytics' inputs);
        # the GPU then only runs the model and NMS. "gpu": nvJPEG decode and batched letterbox on the device.
        self.preprocess = "cpu" if options.preprocess == "cpu" or self.device.type == "cpu" else "gpu"
        decode_device = self.device if self.preprocess == "gpu" else torch.device("cpu")
        self.decoder = ImageDecoder(decode_device, workers=options.workers, gpu_decode=options.gpu_decode,
                                    keep_host=options.return_images, max_pixels=options.max_image_pixels,
                                    jpeg_decode=options.jpeg_decode, hardware_share=options.hardware_share,
                                    batch=options.batch)
        self.return_images = options.return_images
        # videos: NVDEC's decoder where asked or (auto) usable, frames staying on the device; None: FFmpeg
        self.video_decoder = video_decoder_for(options.video_decode, self.device if self.preprocess == "gpu" else None)
        cuda = self.device.type == "cuda"
        # The graph holds NMS too, which needs the fixed-shape Triton kernels (torchvision's NMS is dynamic).
        self.uses_cuda_graph = (cuda and options.cuda_graph and self.engine.graph_capturable and triton_available()
                                and options.nms in ("auto", "triton"))
        self.graph_modules = [getattr(self.engine, "module")] if self.uses_cuda_graph else []
        # model + NMS for one batch: replayed as a CUDA graph per bucket where it can be, else run as it is
        self.step = CudaGraphCache(self.detect_step, self.graph_modules) if self.uses_cuda_graph else self.detect_step
        smallest = min(self.engine.min_batch, self.batch)  # below it, batches are padded
        self.buckets = sorted({self.batch} | {1 << i for i in range(self.batch.bit_length())
                                              if smallest <= (1 << i) < self.batch})
        self.slots = [self.make_slot(), self.make_slot()]  # predict()'s (or submit_frames') two batches in flight
        self.direct_slot = self.make_slot()  # detect()'s and the profiler's: its own buffers, never raced
        self._canvases: set[tuple[int, int]] = set()
        self.decode_stream = torch.cuda.Stream(self.device) if cuda else None
        self.compute_stream = torch.cuda.Stream(self.device) if cuda else None
        self._timing_lock = threading.Lock()
        self.timings: dict[str, StageTiming] = {}
        self.stats = {"inputs": 0, "ok": 0, "errors": 0, "seconds": 0.0}
        self.autotune_batches = {self.batch}  # see _cudnn_autotuning

    # ----------------------------------------------------------------------------------------------- config
    @property
    def names(self) -> dict[int, str]:
        return self.model.spec.names

    def make_slot(self) -> Slot:
        return Slot(self.batch, self.post.max_det, self.device, self.engine.input_dtype, self.engine.channels_last)

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
            **self.decoder.describe(),
            "preprocess": self.preprocess,
        }

    def bucket(self, n: int) -> int:
        """Smallest captured batch size that holds ``n`` images (a partial batch runs padded in it)."""
        return next(b for b in self.buckets if b >= n)

    def canvas_for(self, hws: list[tuple[int, int]]) -> tuple[int, int]:
        """The model-input size for pictures of these sizes (a rect canvas, or the square one past the limit)."""
        canvas = canvas_shape(hws, self.imgsz, self.stride, self.rect)
        if canvas not in self._canvases:
            if len(self._canvases) >= self._max_canvases:
                return self.imgsz
            self._canvases.add(canvas)
        return canvas

    @property
    def canvases(self) -> set[tuple[int, int]]:
        return set(self._canvases)

    @contextlib.contextmanager
    def timer(self, stage: str):
        """Adds the wall time of the block to ``timings[stage]`` (safe from the producer thread too)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            with self._timing_lock:
                self.timings.setdefault(stage, StageTiming(stage)).add(time.perf_counter() - t0)

    # ----------------------------------------------------------------------------------------------- steps
    def detect_step(self, x: torch.Tensor, geometry: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Model + NMS on a letterboxed batch: [B, max_det, 6] rows and [B] counts (what the CUDA graph holds)."""
        with self._cudnn_autotuning(x.shape[0]):
            raw = self.engine(x)
        return postprocess(raw, geometry, self.post)

    @contextlib.contextmanager
    def _cudnn_autotuning(self, batch: int):
        """cuDNN autotunes only the batch sizes in ``autotune_batches`` (the Detector's own batch): a smaller, padded
        bucket takes cuDNN's heuristics instead of stalling 1-2.5 s to tune one more shape at its first call (a
        stream's partial batch). The autotuner's gain is at the batch that runs most
        (benchmarks/results/optimize/reload_diag_h100_warm_start.json). The flag is process-wide and read when a
        convolution is called, so only at a CUDA graph's warm-up and capture."""
        if self.device.type != "cuda" or batch in self.autotune_batches or not torch.backends.cudnn.benchmark:
            yield
            return
        torch.backends.cudnn.benchmark = False
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = True

    def decode(self, loaded: list) -> Batch:
        """Read items (``decoder.load``'s output) -> a batch of device pictures and the inputs' error records."""
        return Batch.from_decoded(self.decoder.decode_loaded(loaded))

    def letterbox_into(self, slot: Slot, images: list[DecodedImage], bucket: int) -> None:
        """Write ``images`` into the slot's input buffer (and their geometry), on the current stream. With CPU
        preprocessing on a GPU, that is ``letterbox_on_host`` then ``upload_letterboxed``."""
        canvas = self.canvas_for([im.hw for im in images])
        if self.preprocess == "cpu" and self.device.type == "cuda":
            geometries = self.letterbox_on_host(slot, images, canvas)
            self.upload_letterboxed(slot, len(images), canvas)
        else:
            geometries = letterbox_batch([im.tensor for im in images], slot.input(canvas)[: len(images)])
        slot.geometry[:bucket].copy_(geometry_tensor(geometries, bucket, self.device))
        slot.canvas = canvas

    def letterbox_on_host(self, slot: Slot, images: list[DecodedImage], canvas: tuple[int, int]) -> list:
        """Letterbox host pictures into the slot's pinned uint8 canvas (OpenCV); returns their geometries."""
        host, _ = slot.host_input(canvas)
        return letterbox_batch([im.tensor for im in images], host[: len(images)])

    def upload_letterboxed(self, slot: Slot, n: int, canvas: tuple[int, int]) -> None:
        """The pinned uint8 canvas -> the device input (raw pixels cross PCIe: 4x fewer bytes than float32)."""
        host, device_u8 = slot.host_input(canvas)
        device_u8[:n].copy_(host[:n], non_blocking=True)
        slot.input(canvas)[:n].copy_(device_u8[:n]).mul_(1.0 / 255.0)

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
                    dets, counts = self.step(x, g)
                slot.host_dets[: batch.bucket].copy_(dets)
                slot.host_counts[: batch.bucket].copy_(counts)
            else:
                with torch.cuda.stream(self.compute_stream), torch.inference_mode():
                    self.compute_stream.wait_event(slot.ready)
                    dets, counts = self.step(x, g)
                    slot.host_dets[: batch.bucket].copy_(dets, non_blocking=True)
                    slot.host_counts[: batch.bucket].copy_(counts, non_blocking=True)
                    slot.done.record(self.compute_stream)

    def collect(self, batch: Batch, release=None) -> list[Result]:
        """Wait for the batch's results, hand its slot back (``release``), and build one result per input."""
        with self.timer("wait+collect"):
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
            return self.results(batch, dets, counts)

    def results(self, batch: Batch, dets: np.ndarray | None, counts: np.ndarray | None) -> list[Result]:
        """One Detections (from the host rows ``dets`` [n, max_det, 6] and ``counts`` [n]) or ErrorRecord per
        input, in input order, counted in ``stats``."""
        out: list[Result] = []
        for entry in batch.order:
            if isinstance(entry, ErrorRecord):
                out.append(entry)
                continue
            im = batch.images[entry]
            d = dets[entry, : counts[entry]]
            out.append(Detections(im.ref, im.hw, d[:, :4], d[:, 4], d[:, 5].astype(np.int64), self.names, image=im.host))
        n_err = sum(isinstance(r, ErrorRecord) for r in out)
        self.stats["inputs"] += len(out)
        self.stats["errors"] += n_err
        self.stats["ok"] += len(out) - n_err
        return out
