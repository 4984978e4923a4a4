"""Video decoded on the GPU's NVDEC engines (PyNvVideoCodec), frames kept in device memory.

PyAV demuxes on the host (packets only: the reader's pacing, gaps, on-demand holding and reconnects stay as they
are); H.264/HEVC from MP4-like containers are rewritten to Annex B, as NVDEC's parser reads only that. Each packet is
decoded on NVDEC into NV12; the frame is copied at once into a tensor of our own (the decoder reuses its surfaces),
so it can wait in a stream's queue for a batch, where the letterbox reads NV12 directly (ops/color.py). No frame
is copied to the host.

PyNvVideoCodec is optional (the ``nvdec`` extra). Without it, or without an NVDEC engine, or for a stream it cannot
take (codec, chroma format, bit depth, size), the stream is decoded on the CPU as before.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from dataclasses import dataclass

import numpy as np

from yolotune.capture_guard import CAPTURE_GUARD
from yolotune.extras import extra_available, load_extra

# PyAV codec name -> PyNvVideoCodec's cudaVideoCodec member
NVDEC_CODECS = {
    "h264": "H264", "hevc": "HEVC", "av1": "AV1", "vp9": "VP9", "vp8": "VP8", "mpeg4": "MPEG4",
    "mpeg2video": "MPEG2", "mpeg1video": "MPEG1", "vc1": "VC1", "mjpeg": "JPEG",
}
# 8-bit 4:2:0: what NVDEC decodes into NV12 (other formats are decoded on the CPU)
NV12_SOURCES = ("yuv420p", "yuvj420p", "nv12")


class NvdecUnavailable(Exception):
    """This stream cannot be decoded on NVDEC (the reason says why); it is decoded on the CPU instead."""


class NvdecError(Exception):
    """NVDEC refused a packet."""


class NvdecFailed(Exception):
    """The NVDEC session broke on the device side (memory, a CUDA error), not on a packet: the stream goes on on
    the CPU (io/video.py)."""


@dataclass
class NV12Picture:
    """A frame NVDEC decoded: ``planes`` [h * 3 / 2, w] uint8 NV12 in device memory (Y rows, then rows of U, V
    pairs), owned by this picture. ``pts`` in the stream's time base (None where the packet had none)."""

    planes: object  # torch.Tensor
    pts: int | None = None
    # the CUDA stream its planes are written on, where the decoder left the wait to its reader (``sync=False``):
    # read on that stream, or after waiting for it. None: ready on any stream.
    written_on: object = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.planes.shape)

    @property
    def height(self) -> int:
        return self.planes.shape[0] * 2 // 3

    @property
    def width(self) -> int:
        return self.planes.shape[1]

    @property
    def nbytes(self) -> int:
        return self.planes.numel()


def is_nv12(frame) -> bool:
    return isinstance(frame, NV12Picture)


def annexb_filter(codec_name: str, extradata: bytes | None) -> str | None:
    """The bitstream filter that makes a stream's packets Annex B, where they are length-prefixed (avcC / hvcC
    extradata, whose first byte is its version, 1, as MP4, MKV and MOV store them); None where they are Annex B
    already (RTSP, MPEG-TS, raw .h264) or the codec has no such form."""
    if codec_name not in ("h264", "hevc") or not extradata:
        return None
    return f"{codec_name}_mp4toannexb" if extradata[0] == 1 else None


def stream_problem(codec_name: str, pix_fmt: str | None, size: tuple[int, int], caps: dict | None) -> str | None:
    """Why NVDEC cannot take a stream (None: it can). ``caps``: the GPU's for this codec (``decoder_caps``)."""
    if codec_name not in NVDEC_CODECS:
        return f"NVDEC does not decode {codec_name}"
    if pix_fmt is not None and pix_fmt not in NV12_SOURCES:
        return f"{pix_fmt} is not 8-bit 4:2:0"
    if size[0] % 2 or size[1] % 2:
        return f"odd picture size {size[1]}x{size[0]}"
    if caps is None:
        return None
    if not caps.get("supported", 1) or not caps.get("num_decoder_engines", 1):
        return f"this GPU's NVDEC does not decode {codec_name}"
    max_w, max_h = caps.get("max_width", 0), caps.get("max_height", 0)
    min_w, min_h = caps.get("min_width", 0), caps.get("min_height", 0)
    h, w = size
    if (max_w and w > max_w) or (max_h and h > max_h) or w < min_w or h < min_h:
        return f"{w}x{h} is outside NVDEC's {min_w}x{min_h} to {max_w}x{max_h}"
    return None


def _module():
    return load_extra("PyNvVideoCodec", "PyNvVideoCodec", "nvdec", NvdecUnavailable)


def available() -> bool:
    """Whether PyNvVideoCodec loads here (an NVIDIA driver with libnvcuvid, the nvdec extra)."""
    return extra_available("PyNvVideoCodec")


@functools.lru_cache(maxsize=64)
def decoder_caps(gpu: int, codec_name: str, bit_depth: int = 8) -> dict:
    """NVDEC's capabilities on GPU ``gpu`` for 4:2:0 ``codec_name``: supported, engines, min/max size (cached)."""
    nvc = _module()
    try:
        caps = nvc.GetDecoderCaps(gpuid=gpu, codec=getattr(nvc.cudaVideoCodec, NVDEC_CODECS[codec_name]),
                                  chromaformat=_chroma_420(nvc), bitdepth=bit_depth)
    except Exception as e:  # noqa: BLE001
        raise NvdecUnavailable(f"NVDEC capabilities unavailable: {type(e).__name__}: {e}") from e
    return {k: int(v) for k, v in dict(caps).items() if isinstance(v, (int, bool))}


def _chroma_420(nvc):
    """cudaVideoChromaFormat's 4:2:0 member, whatever the binding names it ("420" is not an attribute name)."""
    members = getattr(nvc.cudaVideoChromaFormat, "__members__", {})
    for name, value in members.items():
        if name.upper().replace("_", "").removeprefix("YUV").removeprefix("CHROMA") == "420":
            return value
    return nvc.cudaVideoChromaFormat(1)  # the Video Codec SDK's cudaVideoChromaFormat_420


def engines(gpu: int = 0) -> int:
    """NVDEC engines on GPU ``gpu`` (0 where there are none or PyNvVideoCodec is missing)."""
    try:
        return decoder_caps(gpu, "h264").get("num_decoder_engines", 0)
    except NvdecUnavailable:
        return 0


_context_lock = threading.Lock()


def _current_context() -> int:
    """The CUDA context torch runs on (the device's primary context), for the decoder to share."""
    libcuda = ctypes.CDLL("libcuda.so.1")
    ctx = ctypes.c_void_p()
    libcuda.cuCtxGetCurrent(ctypes.byref(ctx))
    return int(ctx.value or 0)


class NvdecDecoder:
    """One opened stream's NVDEC session. ``decode(packet)`` (a PyAV packet; None flushes at the end) returns
    NV12Pictures, ready to read on any CUDA stream, or with ``sync=False`` still being copied on ``written_on``
    (a reader that copies them at once waits once per frame, not twice). Raises NvdecUnavailable when NVDEC cannot
    take the stream."""

    def __init__(self, stream, device, sync: bool = True):
        import torch

        cc = stream.codec_context
        self.codec_name = cc.name
        self.device = torch.device(device)
        gpu = self.device.index if self.device.index is not None else torch.cuda.current_device()
        problem = stream_problem(cc.name, cc.pix_fmt, (cc.height, cc.width), None)
        if problem:
            raise NvdecUnavailable(problem)
        nvc = _module()
        problem = stream_problem(cc.name, cc.pix_fmt, (cc.height, cc.width), decoder_caps(gpu, cc.name))
        if problem:
            raise NvdecUnavailable(problem)
        self._nvc = nvc
        self.sync = sync
        self._bsf = None
        name = annexb_filter(cc.name, cc.extradata)
        if name:
            from av.bitstream import BitStreamFilterContext

            self._bsf = BitStreamFilterContext(name, stream)
        # no B-frames (cameras): each packet's frame comes out at once, not ~4 packets later
        self.low_latency = not cc.has_b_frames
        self.stream = torch.cuda.Stream(self.device)
        with torch.cuda.device(self.device), _context_lock:
            torch.cuda.init()
            context = _current_context()
            latency = nvc.DisplayDecodeLatencyType.LOW if self.low_latency else nvc.DisplayDecodeLatencyType.NATIVE
            try:
                with CAPTURE_GUARD.shared():
                        self._decoder = nvc.CreateDecoder(
                        gpuid=gpu, codec=getattr(nvc.cudaVideoCodec, NVDEC_CODECS[cc.name]), cudacontext=context,
                        cudastream=self.stream.cuda_stream, usedevicememory=True, latency=latency)
            except Exception as e:  # noqa: BLE001
                raise NvdecUnavailable(f"NVDEC decoder not created: {type(e).__name__}: {e}") from e
        self.frames = 0

    def decode(self, packet) -> list[NV12Picture]:
        if self._bsf is not None:
            packets = self._bsf.filter(packet)
        else:
            packets = [] if packet is None else [packet]
        out: list[NV12Picture] = []
        for p in packets:
            out += self._decode_one(p)
        if packet is None:  # the end: what NVDEC still holds
            out += self._decode_one(None)
        return out

    def _decode_one(self, packet) -> list[NV12Picture]:
        import torch

        nvc = self._nvc
        pd = nvc.PacketData()
        data = None
        if packet is not None:
            data = np.frombuffer(packet, np.uint8)
            if not data.size:
                return []
            pd.bsl_data, pd.bsl = data.ctypes.data, data.size
            pd.pts = packet.pts if packet.pts is not None else _NO_PTS
            if self.low_latency:
                pd.decode_flag = nvc.VideoPacketFlag.ENDOFPICTURE
        # kept apart from CUDA graph captures in this process's other threads: NVDEC invalidated one (on an H100)
        with CAPTURE_GUARD.shared(), torch.cuda.stream(self.stream):
            try:
                decoded = self._decoder.Decode(pd)
            except Exception as e:  # noqa: BLE001  (PyNvVideoCodec's own exception types)
                raise NvdecError(f"NVDEC: {type(e).__name__}: {e}") from e
            pictures = []
            try:
                for frame in decoded:
                    planes = nv12_tensor(torch.from_dlpack(frame))
                    own = torch.empty_like(planes, memory_format=torch.contiguous_format)
                    # the decoder writes its next frames into the surface it handed over, on this same stream: the
                    # copy is ordered before them
                    own.copy_(planes)
                    pts = int(frame.getPTS())
                    pictures.append(NV12Picture(own, None if pts == _NO_PTS else pts, None if self.sync else self.stream))
                if pictures and self.sync:
                    self.stream.synchronize()  # copied before the frame is handed on
            except NvdecError:
                raise
            except Exception as e:  # noqa: BLE001  (device memory, a CUDA error: the session, not the packet)
                raise NvdecFailed(f"{type(e).__name__}: {e}") from e
        del data
        self.frames += len(pictures)
        return pictures


_NO_PTS = -(2**62)  # a packet without a timestamp (NVDEC carries the value through to its frame)


def nv12_tensor(t):
    """A decoded NV12 frame as DLPack gives it -> [h * 3 / 2, w] (a trailing channel axis of 1 dropped)."""
    if t.dim() == 3 and t.shape[-1] == 1:
        t = t[..., 0]
    if t.dim() != 2 or t.shape[0] % 3:
        raise NvdecError(f"unexpected NV12 frame layout {tuple(t.shape)}")
    return t


def video_decoder_for(choice: str, device) -> object | None:
    """The VideoReader decoder for ``choice`` (auto, nvdec, cpu) on ``device`` (None: preprocessing on the CPU):
    NVDEC's factory, or None for FFmpeg. "nvdec" where NVDEC is not usable is a ValueError saying why."""
    if choice not in ("auto", "nvdec", "cpu"):
        raise ValueError(f"video decode must be auto, nvdec or cpu, not {choice!r}")
    why = nvdec_problem(device) if choice != "cpu" else None
    if choice == "cpu" or why:
        if choice == "nvdec":
            raise ValueError(f"cannot decode video on NVDEC: {why}")
        return None
    return nvdec_factory(device)


def nvdec_problem(device) -> str | None:
    """Why videos cannot be decoded on NVDEC for ``device`` (None: they can)."""
    if device is None or getattr(device, "type", "cpu") != "cuda":
        return "NVDEC needs a CUDA device with preprocessing on it"
    try:
        _module()
    except NvdecUnavailable as e:
        return str(e)
    import torch

    gpu = device.index if device.index is not None else torch.cuda.current_device()
    return None if engines(gpu) else "this GPU has no NVDEC engine"


def nvdec_factory(device, sync: bool = True):
    """What a VideoReader is given to decode on NVDEC: ``make(stream)`` -> NvdecDecoder (or NvdecUnavailable);
    ``sync=False`` for a reader that copies each frame at once on the stream it was written on."""
    return lambda stream: NvdecDecoder(stream, device, sync)
