"""Decode images to RGB uint8 tensors on the target device.

JPEGs that nvJPEG handles (complete, baseline, 3-channel) are decoded on the GPU in one batched call
(torchvision.io.decode_jpeg, device="cuda"). Asked for (jpeg_decode="hardware"), the JPEGs the GPU's hardware decoders
take (NVJPG through nvImageCodec, io/jpeg_hardware.py) are decoded there, off the SMs, split with CUDA nvJPEG by
their measured rates (io/jpeg_routing.py).
Everything else, and everything on CPU-only machines, is decoded by Pillow in a thread pool (Pillow releases the GIL
while decoding): PNG, BMP, WebP, TIFF, CMYK, grayscale, 16-bit, RGBA, progressive JPEG. What one decoder refuses
goes to the next. A file that cannot be decoded becomes an ErrorRecord with the reason.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from yolotune.io.jpeg_header import read_jpeg_header
from yolotune.io.jpeg_routing import RateSplit, route
from yolotune.types import ErrorRecord, InputRef


@dataclass
class DecodedImage:
    ref: InputRef
    tensor: torch.Tensor  # [3, h, w] uint8 RGB on the pipeline device
    host: np.ndarray | None = None  # [h, w, 3] uint8 RGB, when the caller asked for host copies

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.tensor.shape[1]), int(self.tensor.shape[2])


# An item to decode: its reference and either encoded bytes (None: read the file) or an RGB array (video frame).
DecodeItem = tuple[InputRef, "bytes | bytearray | np.ndarray | torch.Tensor | None"]


def read_file(path: str) -> bytearray:
    with open(path, "rb") as f:
        data = bytearray(os.fstat(f.fileno()).st_size)
        f.readinto(data)
    return data


def pil_to_rgb_array(im: Image.Image) -> np.ndarray:
    """[h, w, 3] uint8 RGB from any Pillow mode; 16/32-bit grey keeps its high byte (as OpenCV does), alpha dropped."""
    if im.mode.startswith("I;16") or im.mode == "I":
        a = np.asarray(im).astype(np.int64)
        a = a >> 8 if (im.mode.startswith("I;16") or a.max() > 255) else a
        a = np.clip(a, 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if im.mode == "F":
        a = np.clip(np.asarray(im), 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.array(im)  # a writable copy: torch refuses to wrap read-only buffers


def _pillow_open():
    """Pillow's own Image.open. Importing Ultralytics replaces it process-wide with a wrapper that, on an unknown
    format, tries to install and import pi-heif (offline: ModuleNotFoundError); undo that for our decoding."""
    opener = Image.open
    module = sys.modules.get(getattr(opener, "__module__", "") or "")
    if module is not None and module.__name__.startswith("ultralytics"):
        opener = getattr(module, "_image_open", opener)
    return opener


# Pillow's decompression-bomb limit (89.5 megapixels) unless a Detector is given another (--max-image-pixels)
DEFAULT_MAX_PIXELS = int(Image.MAX_IMAGE_PIXELS or 0)


def pixel_limit_problem(width: int, height: int, max_pixels: int | None) -> str | None:
    """Why a picture of this size is refused (None when it is not): a decompression bomb guard with a way out."""
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    if limit and width * height > limit:
        return (f"image too large: {width}x{height} = {width * height:,} pixels, above the limit of {limit:,} "
                "(raise it with --max-image-pixels N, or 0 for none)")
    return None


def allow_images_up_to(max_pixels: int | None) -> None:
    """A limit above Pillow's own: Pillow's process-wide check steps aside (yolotune checks each image itself)."""
    if max_pixels is not None and (max_pixels == 0 or max_pixels > DEFAULT_MAX_PIXELS):
        Image.MAX_IMAGE_PIXELS = None


def decode_with_pil(data: bytes | bytearray, max_pixels: int | None = None) -> np.ndarray:
    """Decode any format Pillow reads, applying EXIF orientation. Raises ValueError with a readable reason.
    ``max_pixels``: the largest picture decoded (None: Pillow's default, 0: no limit)."""
    if len(data) == 0:
        raise ValueError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked below
            with _pillow_open()(io.BytesIO(data)) as im:
                problem = pixel_limit_problem(*im.size, max_pixels)
                if problem:
                    raise _TooLarge(problem)
                im.load()
                try:
                    im = ImageOps.exif_transpose(im)
                except Exception:  # a broken EXIF block should not cost the picture
                    pass
                arr = pil_to_rgb_array(im)
    except UnidentifiedImageError:
        raise ValueError("not a recognised image format") from None
    except _TooLarge as e:
        raise ValueError(str(e)) from None
    except Image.DecompressionBombError as e:  # over twice Pillow's own limit: refused while opening
        size = re.search(r"\((\d+) pixels\)", str(e))
        raise ValueError(f"image too large: {int(size.group(1)):,} pixels, above the limit of {DEFAULT_MAX_PIXELS:,} "
                         "(raise it with --max-image-pixels N, or 0 for none)" if size else f"image too large: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"corrupt or truncated image: {e}") from None
    except Exception as e:  # a decoder surprise is still a bad input, never a crash
        raise ValueError(f"cannot decode image: {type(e).__name__}: {e}") from None
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError("image has zero width or height")
    return np.ascontiguousarray(arr)


class _TooLarge(Exception):
    pass


def apply_exif_orientation(t: torch.Tensor, orientation: int) -> torch.Tensor:
    """Rotate/flip a [3, h, w] tensor as EXIF orientation 1..8 says (same result as PIL's exif_transpose)."""
    if orientation == 2:
        return t.flip(2)
    if orientation == 3:
        return t.flip(1, 2)
    if orientation == 4:
        return t.flip(1)
    if orientation == 5:
        return t.transpose(1, 2)
    if orientation == 6:
        return torch.rot90(t, k=-1, dims=(1, 2))
    if orientation == 7:
        return t.transpose(1, 2).flip(1, 2)
    if orientation == 8:
        return torch.rot90(t, k=1, dims=(1, 2))
    return t


JPEG_DECODERS = ("auto", "hardware", "cuda", "cpu")


class ImageDecoder:
    """Decodes a batch of inputs to device tensors: NVJPG and CUDA nvJPEG for the JPEGs they take, Pillow threads
    for the rest. ``jpeg_decode``: "hardware" (NVJPG, split with CUDA nvJPEG: an error where there is none), "cuda"
    (CUDA nvJPEG only), "cpu" (Pillow), "auto" (CUDA nvJPEG on a GPU, else Pillow: the hardware path ran slower end
    to end, benchmarks/results/jpeg/e2e_jpeg_h200_2026-12-06.jsonl).
    ``hardware_share``: NVJPG's fixed share of the JPEGs both take (None: by their measured rates)."""

    def __init__(self, device: torch.device, workers: int | None = None, gpu_decode: bool = True, keep_host: bool = False,
                 max_pixels: int | None = None, jpeg_decode: str = "auto", hardware_share: float | None = None,
                 batch: int = 64):
        if jpeg_decode not in JPEG_DECODERS:
            raise ValueError(f"jpeg decode must be one of {', '.join(JPEG_DECODERS)}, not {jpeg_decode!r}")
        self.device = device
        self.max_pixels = max_pixels  # None: Pillow's default limit; 0: none
        allow_images_up_to(max_pixels)
        self.gpu_decode = gpu_decode and jpeg_decode != "cpu" and device.type == "cuda"
        self.keep_host = keep_host
        self.workers = workers or min(16, os.cpu_count() or 2)
        self.read_tasks = min(4, self.workers)  # pool tasks a batch's file reads are split into
        self.pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="yolotune-decode")
        self.stats = {"gpu": 0, "hardware": 0, "cpu": 0, "errors": 0, "hardware_refused": 0, "read_s": 0.0,
                      "gpu_decode_s": 0.0, "cpu_decode_s": 0.0}
        self.split = RateSplit(hardware_share)
        self.hardware = None  # io/jpeg_hardware.py's decoder
        if jpeg_decode == "hardware":
            problem = "it needs a CUDA device with GPU decoding and preprocessing on it"
            if self.gpu_decode:
                self.hardware, problem = _hardware_decoder(device, batch)
            if self.hardware is None:
                raise ValueError(f"cannot decode JPEGs in hardware: {problem}")
        # CUDA nvJPEG's share runs beside NVJPG's on a stream of its own, finished before its pictures are handed on
        self.side_stream = torch.cuda.Stream(device) if self.hardware is not None else None

    @property
    def jpeg_decoder(self) -> str:
        """Which decoder JPEGs go to: hardware (split with cuda), cuda, or cpu."""
        return "hardware" if self.hardware is not None else "cuda" if self.gpu_decode else "cpu"

    def describe(self) -> dict:
        d = {"jpeg_decode": self.jpeg_decoder}
        if self.hardware is not None:
            d.update(self.split.describe())
        return d

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def decode(self, items: list[DecodeItem]) -> list[DecodedImage | ErrorRecord]:
        """Decode ``items`` in order; each comes back as a DecodedImage or an ErrorRecord."""
        return self.decode_loaded(self.load(items))

    def load(self, items: list[DecodeItem]) -> list:
        """Read files and parse JPEG headers (thread pool); run ahead of ``decode_loaded`` to overlap I/O.

        Each pool task reads a run of files, not one: a 140 KB file from the page cache takes ~20 us to read and
        probe, less than handing one task to a pool thread and back (measured 0.12-0.33 ms per file that way).
        """
        t0 = time.perf_counter()
        runs = max(1, min(self.read_tasks, len(items)))
        step = -(-len(items) // runs)
        parts = [items[i : i + step] for i in range(0, len(items), step)]
        loaded = [x for part in self.pool.map(self._read_and_probe_run, parts) for x in part]
        self.stats["read_s"] += time.perf_counter() - t0
        return loaded

    def _read_and_probe_run(self, items: list[DecodeItem]) -> list:
        return [self._read_and_probe(item) for item in items]

    def decode_loaded(self, loaded: list) -> list[DecodedImage | ErrorRecord]:
        t0 = time.perf_counter()
        results: list[DecodedImage | ErrorRecord | None] = [None] * len(loaded)
        hw_idx, gpu_idx, _ = route([x[2] for x in loaded], self.hardware is not None, self.gpu_decode)
        decoded: dict[int, torch.Tensor | None] = {}
        if hw_idx:
            hw_idx, overflow = self.split.split(hw_idx)
            decoded = self._decode_split(loaded, hw_idx, gpu_idx + overflow)
        elif gpu_idx:
            decoded = dict(zip(gpu_idx, self._decode_on_gpu([loaded[i][1] for i in gpu_idx])))
        for i in sorted(decoded):
            tensor = decoded[i]
            if tensor is not None:
                ref, _, header = loaded[i]
                tensor = apply_exif_orientation(tensor, header.orientation)
                host = tensor.permute(1, 2, 0).cpu().numpy() if self.keep_host else None
                results[i] = DecodedImage(ref, tensor, host)
                self.stats["gpu"] += 1
        t1 = time.perf_counter()
        self.stats["gpu_decode_s"] += t1 - t0
        cpu_idx = [i for i, r in enumerate(results) if r is None]
        for i, out in zip(cpu_idx, self.pool.map(self._decode_on_cpu, [loaded[i] for i in cpu_idx])):
            results[i] = out
        self.stats["cpu_decode_s"] += time.perf_counter() - t1
        return results  # type: ignore[return-value]

    def _read_and_probe(self, item: DecodeItem):
        ref, payload = item
        if isinstance(payload, (ErrorRecord, np.ndarray, torch.Tensor)):  # decoded already (video frames)
            return ref, payload, None
        if payload is None:
            try:
                payload = read_file(ref.path)
            except IsADirectoryError:
                return ref, ErrorRecord(ref, "is a directory, not an image file", "read"), None
            except OSError as e:
                return ref, ErrorRecord(ref, f"cannot read file: {e.strerror or e}", "read"), None
        header = read_jpeg_header(payload)
        if header is not None and header.width and header.height:
            problem = pixel_limit_problem(header.width, header.height, self.max_pixels)
            if problem:  # before nvJPEG or Pillow allocate it
                return ref, ErrorRecord(ref, problem, "decode"), None
        return ref, payload, header

    def _decode_split(self, loaded: list, hw_idx: list[int], gpu_idx: list[int]) -> dict[int, torch.Tensor | None]:
        """NVJPG decodes ``hw_idx`` here while CUDA nvJPEG decodes ``gpu_idx`` in a pool thread, on its own stream;
        each call is timed for the split. What NVJPG refuses is decoded by CUDA nvJPEG after."""
        side = self.side_stream
        current = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None

        def on_cuda() -> tuple[list, float]:
            t = time.perf_counter()
            with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
                out = self._decode_on_gpu([loaded[i][1] for i in gpu_idx])
                if side is not None:
                    side.synchronize()
            return out, time.perf_counter() - t

        pending = self.pool.submit(on_cuda) if gpu_idx else None
        t = time.perf_counter()
        hw = self.hardware.decode([loaded[i][1] for i in hw_idx]) if hw_idx else []
        if hw_idx:
            if current is not None:
                current.synchronize()  # NVJPG's own time, for the split (its engines run while this thread waits)
            self.split.measured("hardware", len(hw_idx), time.perf_counter() - t)
        out = dict(zip(hw_idx, hw))
        self.stats["hardware"] += sum(x is not None for x in hw)
        if pending is not None:
            cuda, seconds = pending.result()
            self.split.measured("cuda", len(gpu_idx), seconds)
            for i, tensor in zip(gpu_idx, cuda):
                if tensor is not None and current is not None:
                    tensor.record_stream(current)  # made on the side stream, read on this one
                out[i] = tensor
        refused = [i for i in hw_idx if out[i] is None]
        if refused:
            self.stats["hardware_refused"] += len(refused)
            out.update(zip(refused, self._decode_on_gpu([loaded[i][1] for i in refused])))
        return out

    def _decode_on_gpu(self, datas: list) -> list[torch.Tensor | None]:
        from torchvision.io import decode_jpeg

        tensors = [torch.frombuffer(d, dtype=torch.uint8) for d in datas]
        try:
            return list(decode_jpeg(tensors, device=self.device))
        except RuntimeError:
            pass
        out: list[torch.Tensor | None] = []
        for t in tensors:  # one bad file fails the batched call: retry one by one, the CPU path takes failures
            try:
                out.append(decode_jpeg(t, device=self.device))
            except RuntimeError:
                out.append(None)
        return out

    def _decode_on_cpu(self, loaded) -> DecodedImage | ErrorRecord:
        ref, payload, _ = loaded
        if isinstance(payload, ErrorRecord):
            self.stats["errors"] += 1
            return payload
        if isinstance(payload, torch.Tensor):  # [3, h, w] RGB decoded on the device (NVDEC video frames)
            self.stats["gpu"] += 1
            host = payload.permute(1, 2, 0).cpu().numpy() if self.keep_host else None
            return DecodedImage(ref, payload.to(self.device), host)
        try:
            arr = payload if isinstance(payload, np.ndarray) else decode_with_pil(payload, self.max_pixels)
        except ValueError as e:
            self.stats["errors"] += 1
            return ErrorRecord(ref, str(e), "decode")
        tensor = torch.from_numpy(arr).permute(2, 0, 1)
        if self.device.type == "cuda":
            tensor = tensor.pin_memory().to(self.device, non_blocking=True)
        self.stats["cpu"] += 1
        return DecodedImage(ref, tensor, arr if self.keep_host else None)


def _hardware_decoder(device: torch.device, batch: int):
    """(io/jpeg_hardware.py's decoder, None), or (None, why there is none)."""
    from yolotune.io import jpeg_hardware

    problem = jpeg_hardware.hardware_problem(device)
    if problem:
        return None, problem
    try:
        return jpeg_hardware.HardwareJpegDecoder(device, batch), None
    except jpeg_hardware.HardwareJpegUnavailable as e:
        return None, str(e)
