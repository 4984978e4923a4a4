"""Static buffers of the pipeline: allocated once per shape, reused by every batch (and by CUDA graphs)."""

from __future__ import annotations

import bisect
import threading
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from yolotune.io.decode import DecodedImage
from yolotune.io.nvdec import is_nv12
from yolotune.ops.letterbox import geometry_tensor, letterbox_geometry
from yolotune.types import ErrorRecord


class Slot:
    """Buffers for one batch in flight: inputs per canvas, geometry, pinned outputs, and the two events that
    order the producer's writes (``ready``) and the host's reads (``done``) against the compute stream."""

    def __init__(self, batch: int, max_det: int, device: torch.device, dtype: torch.dtype, channels_last: bool):
        self.batch, self.device, self.dtype, self.channels_last = batch, device, dtype, channels_last
        self.inputs: dict[tuple[int, int], torch.Tensor] = {}
        self.host_inputs: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self.canvas: tuple[int, int] | None = None  # canvas of the batch now in this slot
        self.geometry = torch.zeros(batch, 6, dtype=torch.float32, device=device)
        pin = device.type == "cuda"
        self.host_dets = torch.zeros(batch, max_det, 6, dtype=torch.float32, pin_memory=pin)
        self.host_counts = torch.zeros(batch, dtype=torch.int32, pin_memory=pin)
        self.ready = torch.cuda.Event() if pin else None
        self.done = torch.cuda.Event() if pin else None

    def input(self, canvas: tuple[int, int]) -> torch.Tensor:
        """The model-input buffer [batch, 3, H, W] for ``canvas`` (engine dtype and memory format)."""
        buf = self.inputs.get(canvas)
        if buf is None:
            # Always a normal tensor, whichever path (predict's producer runs in inference mode, serve's set-up does
            # not) asks first: a compiled function's guards check the input's dispatch keys, and an inference
            # tensor would need a second function (a second ahead-of-time compile).
            with torch.inference_mode(False):
                buf = torch.zeros(self.batch, 3, *canvas, dtype=self.dtype, device=self.device)
                if self.channels_last:
                    buf = buf.contiguous(memory_format=torch.channels_last)
            self.inputs[canvas] = buf
        return buf

    def host_input(self, canvas: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pinned uint8 canvas for CPU preprocessing and its uint8 device twin (raw pixels cross PCIe: 4x fewer
        bytes than float32)."""
        pair = self.host_inputs.get(canvas)
        if pair is None:
            pin = self.device.type == "cuda"
            pair = (
                torch.empty(self.batch, 3, *canvas, dtype=torch.uint8, pin_memory=pin),
                torch.empty(self.batch, 3, *canvas, dtype=torch.uint8, device=self.device),
            )
            self.host_inputs[canvas] = pair
        return pair


class FrameBuffers:
    """The one-graph path for in-memory frames of one shape: pinned staging -> device frames -> model input ->
    pinned outputs. ``graph`` replays (I420 -> RGB,) letterbox, model, NMS and copy-back on these tensors.

    ``layout`` "rgb": frames [bucket, h, w, 3]; "i420": PyAV's yuv420p planes [bucket, h * 3 / 2, w]; "nv12":
    NVDEC's planes [bucket, h * 3 / 2, w / 2, 2] (the chroma rows' U, V pairs; the shape tells the graph's step it is
    NV12). ``hw`` is the picture's size in each. Duck-types a Slot for ``Detector.collect`` (host_dets, host_counts, done)."""

    def __init__(self, bucket: int, hw: tuple[int, int], canvas: tuple[int, int], slot: Slot, device: torch.device,
                 layout: str = "rgb"):
        shape = {"rgb": (bucket, *hw, 3), "i420": (bucket, hw[0] * 3 // 2, hw[1]),
                 "nv12": (bucket, hw[0] * 3 // 2, hw[1] // 2, 2)}[layout]
        pin = device.type == "cuda"
        self.layout = layout
        # NV12 frames are on the device already (NVDEC): no host staging
        self.staging = None if layout == "nv12" else torch.empty(shape, dtype=torch.uint8, pin_memory=pin)
        self.i420_staging: torch.Tensor | None = None  # nv12: I420 host frames beside NVDEC's (made at the first)
        self.frames = torch.empty(shape, dtype=torch.uint8, device=device)
        self.inputs = slot.input(canvas)[:bucket]
        self.geometry = geometry_tensor([letterbox_geometry(hw, canvas)] * bucket, bucket, device)
        self.host_dets = torch.empty(bucket, slot.host_dets.shape[1], 6, dtype=torch.float32, pin_memory=pin)
        self.host_counts = torch.empty(bucket, dtype=torch.int32, pin_memory=pin)
        self.graph: torch.cuda.CUDAGraph | None = None  # captured on first use
        self.ready = torch.cuda.Event() if pin else None  # frames uploaded (decode stream)
        self.done = torch.cuda.Event() if pin else None  # results in host_dets (compute stream)

    @property
    def static_tensors(self) -> tuple[torch.Tensor, ...]:
        return self.frames, self.inputs, self.geometry, self.host_dets, self.host_counts


def frame_layout(frames: Sequence) -> str | None:
    """"rgb" or "i420" when every frame is a host array of that layout and one shape, "nv12" when NVDEC pictures
    (and I420 host arrays, decoded on the CPU beside them) have one shape (the one-graph path), else None."""
    if frames and any(is_nv12(f) for f in frames):  # I420 host frames beside them are converted as they upload
        nv12_or_i420 = all(is_nv12(f) or (isinstance(f, np.ndarray) and f.dtype == np.uint8 and f.ndim == 2)
                           for f in frames)
        return "nv12" if nv12_or_i420 and len({tuple(f.shape) for f in frames}) == 1 else None
    if not frames or not all(isinstance(f, np.ndarray) and f.dtype == np.uint8 for f in frames):
        return None
    if len({f.shape for f in frames}) != 1:
        return None
    f = frames[0]
    if f.ndim == 3 and f.shape[2] == 3:
        return "rgb"
    if f.ndim == 2 and f.shape[0] % 3 == 0 and f.shape[1] % 2 == 0 and (f.shape[0] * 2 // 3) % 2 == 0:
        return "i420"
    return None


def picture_hw(frame, layout: str) -> tuple[int, int]:
    return (frame.shape[0], frame.shape[1]) if layout == "rgb" else (frame.shape[0] * 2 // 3, frame.shape[1])


@dataclass
class Batch:
    """One batch between producer and consumer: per input either an ErrorRecord or its row in the slot."""

    order: list[ErrorRecord | int]
    images: list[DecodedImage]
    slot: Slot | None = None
    bucket: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_decoded(cls, decoded: list[DecodedImage | ErrorRecord]) -> "Batch":
        order: list[ErrorRecord | int] = []
        images: list[DecodedImage] = []
        for d in decoded:
            if isinstance(d, DecodedImage):
                order.append(len(images))
                images.append(d)
            else:
                order.append(d)
        return cls(order, images)


def host_tensor(arr: np.ndarray) -> torch.Tensor:
    """A tensor view of a host array that is only read (read-only arrays are fine: torch just warns about them)."""
    if arr.flags.writeable:
        return torch.from_numpy(arr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr)


# Host ranges page-locked by register_host_memory, as sorted (start, end) pairs. Swapped whole on each change, so
# readers (the engine thread, once per frame) need no lock. It replaces a driver query per frame (Tensor.is_pinned)
# that stall traces caught the engine thread in (benchmarks/results/serve/serve_stalls_h100_lookup_vs_driver_2.json).
_registered: tuple[tuple[int, int], ...] = ()
_registered_lock = threading.Lock()


def register_host_memory(buffer, device: torch.device):
    """Page-lock an existing host buffer (a shared-memory ring) for DMA: frames in it upload straight to the device
    with no copy into pinned staging. Returns the function that unregisters it, or None where that is not possible
    (no CUDA, or the driver refused; uploads then go through staging as before)."""
    global _registered
    if getattr(device, "type", "cpu") != "cuda":
        return None
    view = np.frombuffer(buffer, dtype=np.uint8)
    if view.nbytes == 0:
        return None
    ptr = view.ctypes.data
    cudart = torch.cuda.cudart()
    err = cudart.cudaHostRegister(ptr, view.nbytes, 0)  # cudaHostRegisterDefault
    if int(err) != 0:
        # CUDA also keeps the error as this host thread's "last error", which a later kernel launch on the same
        # thread would report: call this from a thread that launches no kernels (DecoderPool's pinner thread).
        return None
    span = (ptr, ptr + view.nbytes)
    with _registered_lock:
        _registered = tuple(sorted((*_registered, span)))

    def unregister() -> None:
        global _registered
        with _registered_lock:  # forgotten first: no upload may take the range for page-locked after this
            _registered = tuple(s for s in _registered if s != span)
        cudart.cudaHostUnregister(ptr)

    return unregister


def in_registered_memory(arr: np.ndarray) -> bool:
    """Whether all of ``arr`` lies in a buffer page-locked by register_host_memory (no driver call)."""
    spans = _registered
    if not spans:
        return False
    start = arr.ctypes.data
    i = bisect.bisect_right(spans, (start, float("inf"))) - 1
    return i >= 0 and spans[i][0] <= start and start + arr.nbytes <= spans[i][1]


def copy_all(dsts: list[torch.Tensor], srcs: list[torch.Tensor]) -> None:
    """``dsts[i].copy_(srcs[i], non_blocking=True)`` for all i in one call: the GIL is let go and taken back once,
    not once per frame, while other threads (the decoder pool's receiver, the sinks) want it."""
    if dsts:
        torch._foreach_copy_(dsts, srcs, non_blocking=True)  # torch >= 2.1; the project needs 2.4


def is_page_locked(frame: np.ndarray | torch.Tensor) -> bool:
    """Whether a host frame lives in page-locked memory, so the device can DMA straight from it. A numpy array is
    page-locked when it lies in a buffer registered by register_host_memory (the decoder processes' rings): a lookup,
    not a driver query per frame. A tensor answers itself (pinned by torch, or registered)."""
    if isinstance(frame, np.ndarray):
        return in_registered_memory(frame)
    try:
        return frame.is_pinned()
    except RuntimeError:  # no accelerator in this build
        return False
