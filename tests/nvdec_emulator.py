"""NVDEC's reference twin for CPU tests: decodes with FFmpeg and hands frames over as NVDEC does (NV12Pictures,
timestamps carried through), so routing, the runtime's handling of device frames and the NV12 paths are tested
without a GPU."""

from __future__ import annotations

import torch

from yolotune.io.nvdec import NV12Picture, NvdecUnavailable, stream_problem
from yolotune.ops.color import i420_to_nv12


class EmulatedNvdec:
    def __init__(self, stream, refuse: set[str] = frozenset()):
        cc = stream.codec_context
        problem = "refused by the test" if cc.name in refuse else stream_problem(cc.name, cc.pix_fmt, (cc.height, cc.width), None)
        if problem:
            raise NvdecUnavailable(problem)
        self.codec = cc
        self.frames = 0

    def decode(self, packet):
        out = []
        for frame in self.codec.decode(packet):
            planes = torch.from_numpy(frame.to_ndarray(format="yuv420p"))
            out.append(NV12Picture(i420_to_nv12(planes[None])[0], frame.pts))
        self.frames += len(out)
        return out


def emulated_factory(refuse: set[str] = frozenset()):
    return lambda stream: EmulatedNvdec(stream, refuse)
