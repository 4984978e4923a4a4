"""JPEGs decoded by the GPU's hardware JPEG decoders (NVJPG: A100, H100, H200, ...) through nvImageCodec, off the SMs.

CUDA nvJPEG (torchvision's decode_jpeg) decodes with CUDA kernels on the same SMs the model runs on; at several
thousand images a second the two take turns and cap the pipeline well under either's own rate. NVJPG engines are
separate silicon. nvImageCodec's hardware backend (``HW_GPU_ONLY``) drives them; it takes complete baseline 8-bit
YCbCr JPEGs (``JpegHeader.hardware_decodable``), and what it refuses comes back as None for the caller's next
decoder (CUDA nvJPEG, then Pillow). Pictures come out as [3, h, w] uint8 RGB tensors in device memory, written on the
caller's current CUDA stream, ready for the letterbox without another copy.

nvImageCodec is optional (the ``jpeg`` extra, nvidia-nvimgcodec-cu13). Without it, or on a GPU without NVJPG, JPEGs
are decoded as before.
"""

from __future__ import annotations

import io
import threading

from yolotune.capture_guard import CAPTURE_GUARD
from yolotune.extras import extra_available, load_extra


class HardwareJpegUnavailable(Exception):
    """No hardware JPEG decoding here (the reason says why)."""


def _module():
    return load_extra("nvidia.nvimgcodec", "nvImageCodec", "jpeg", HardwareJpegUnavailable)


def available() -> bool:
    """Whether nvImageCodec loads here (the jpeg extra)."""
    return extra_available("nvidia.nvimgcodec")


def _primer(size: int = 64) -> bytes:
    """A small baseline 4:2:0 JPEG: what every NVJPG takes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), (73, 131, 197)).save(buf, "JPEG", quality=90, subsampling=2)
    return buf.getvalue()


class HardwareJpegDecoder:
    """nvImageCodec's hardware backend on ``device``. ``decode(datas)`` -> one [3, h, w] uint8 RGB tensor per JPEG
    (None where the hardware refused it), written on the current CUDA stream. Raises HardwareJpegUnavailable where
    this GPU has no hardware decoder or nvImageCodec is missing.

    ``batch``: the most JPEGs one call takes; nvJPEG's hardware batch is sized at the first call, so the decoder is
    primed with that many (a refusal there means no hardware decoder)."""

    def __init__(self, device, batch: int = 64):
        import torch

        nvc = _module()
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise HardwareJpegUnavailable("hardware JPEG decoding needs a CUDA device")
        gpu = self.device.index if self.device.index is not None else torch.cuda.current_device()
        self._nvc = nvc
        self._lock = threading.Lock()  # one call at a time: a Decoder is not shared between threads
        try:
            self._decoder = nvc.Decoder(device_id=gpu, backends=[nvc.Backend(nvc.BackendKind.HW_GPU_ONLY)])
            self._params = nvc.DecodeParams(apply_exif_orientation=False, color_spec=nvc.ColorSpec.SRGB,
                                            sample_format=nvc.SampleFormat.P_RGB)
        except Exception as e:  # noqa: BLE001  (nvImageCodec's own error types)
            raise HardwareJpegUnavailable(f"no hardware JPEG decoder: {type(e).__name__}: {e}") from e
        self.batch = max(1, batch)
        with torch.cuda.device(self.device):
            primed = self._decode_raw([_primer()] * self.batch)
            torch.cuda.current_stream(self.device).synchronize()
        if any(t is None for t in primed):
            raise HardwareJpegUnavailable("this GPU's hardware JPEG decoder refused a baseline JPEG (no NVJPG?)")
        try:  # the layout this version gives, read off the primer's pictures
            self._interleaved = _is_interleaved(primed[0])
        except ValueError as e:
            raise HardwareJpegUnavailable(str(e)) from e

    def decode(self, datas: list) -> list:
        """``datas``: encoded JPEGs (bytes, bytearray or memoryview). Calls of more than ``batch`` are split."""
        return [None if t is None else _planar(t, self._interleaved) for t in self._decode_raw(datas)]

    def _decode_raw(self, datas: list) -> list:
        """The pictures as nvImageCodec lays them out (None where refused)."""
        import torch

        out: list = []
        stream = torch.cuda.current_stream(self.device).cuda_stream
        for i in range(0, len(datas), self.batch):
            part = [self._code_stream(d) for d in datas[i:i + self.batch]]
            # kept apart from CUDA graph captures in other threads, as NVDEC's decoding is (capture_guard.py)
            with self._lock, CAPTURE_GUARD.shared():
                try:
                    images = self._decoder.decode(part, params=self._params, cuda_stream=stream)
                except Exception:  # noqa: BLE001  (a call nvImageCodec refuses as a whole: the next decoder takes it)
                    images = [None] * len(part)
            for im in images:
                out.append(None if im is None else torch.from_dlpack(im))
        return out

    def _code_stream(self, data):
        """The encoded bytes as nvImageCodec reads them: a uint8 array over the caller's buffer (no copy) where this
        version takes one, else bytes."""
        import numpy as np

        if not _COPY_BYTES:
            try:
                return self._nvc.CodeStream(np.frombuffer(data, np.uint8))
            except TypeError:
                _COPY_BYTES.append(True)
        return self._nvc.CodeStream(data if isinstance(data, bytes) else bytes(data))


_COPY_BYTES: list = []  # set once nvImageCodec has refused an array


def _is_interleaved(t) -> bool:
    """Whether nvImageCodec gave [h, w, 3] rather than the planar [3, h, w] asked for (versions differ; some add a
    batch axis of 1), read off a picture that is not 3 pixels wide or high."""
    shape = tuple(t.shape[1:] if t.dim() == 4 else t.shape)
    if len(shape) == 3 and shape[0] == 3 and shape[2] != 3:
        return False
    if len(shape) == 3 and shape[2] == 3 and shape[0] != 3:
        return True
    raise ValueError(f"nvImageCodec returned pictures of an unknown layout: {list(t.shape)}")


def _planar(t, interleaved: bool):
    """[3, h, w] from what nvImageCodec returns (a view: no copy)."""
    t = t[0] if t.dim() == 4 else t
    return t.permute(2, 0, 1) if interleaved else t


def hardware_problem(device) -> str | None:
    """Why JPEGs cannot be decoded by hardware for ``device`` (None: nvImageCodec is here; the decoder's priming
    says whether this GPU has NVJPG)."""
    if device is None or getattr(device, "type", "cpu") != "cuda":
        return "hardware JPEG decoding needs a CUDA device"
    try:
        _module()
    except HardwareJpegUnavailable as e:
        return str(e)
    return None
