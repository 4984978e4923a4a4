"""NVDEC's reference twin for CPU tests: decodes with FFmpeg and hands frames over as NVDEC does (NV12Pictures,
timestamps carried through), so routing, the runtime's handling of device frames and the NV12 paths are tested
without a GPU."""

from __future__ import annotations

import av
import torch

from yolotune.io.nvdec import NV12Picture, NvdecFailed, NvdecUnavailable, stream_problem
from yolotune.ops.color import i420_to_nv12


class EmulatedNvdec:
    """``fail_after``: the session breaks (NvdecFailed) at the first packet after that many frames, as a device
    fault would; a decoder context of its own, as NVDEC's session is apart from the stream's FFmpeg decoder."""

    def __init__(self, stream, refuse: set[str] = frozenset(), fail_after: int | None = None):
        cc = stream.codec_context
        problem = "refused by the test" if cc.name in refuse else stream_problem(cc.name, cc.pix_fmt, (cc.height, cc.width), None)
        if problem:
            raise NvdecUnavailable(problem)
        self.codec = av.CodecContext.create(cc.name, "r")
        self.codec.extradata = cc.extradata
        self.frames, self.fail_after = 0, fail_after

    def decode(self, packet):
        if self.fail_after is not None and self.frames >= self.fail_after:
            raise NvdecFailed("RuntimeError: CUDA error: an illegal memory access was encountered (emulated)")
        out = []
        for frame in self.codec.decode(packet):
            planes = torch.from_numpy(frame.to_ndarray(format="yuv420p"))
            out.append(NV12Picture(i420_to_nv12(planes[None])[0], frame.pts))
        self.frames += len(out)
        return out


def emulated_factory(refuse: set[str] = frozenset(), fail_after: int | None = None):
    return lambda stream: EmulatedNvdec(stream, refuse, fail_after)
