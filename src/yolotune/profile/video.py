"""Profiling a video: its frames as the profile's inputs, decoded in the "decode" stage by the decoder the pipeline
uses (FFmpeg on the CPU, or NVDEC), and a probe of both decoders on the same frames, so ``diagnose`` can say when
the video decoder sets the pace and what NVDEC would change (DeepStream users ask exactly this of their pipelines).
"""

from __future__ import annotations

import time
from itertools import islice

from yolotune.io.video import iter_video_frames
from yolotune.types import ErrorRecord, InputRef


class VideoFrames:
    """A video's frames, looped, handed out ``take(n)`` at a time as (InputRef, decoded frame) pairs: what a batch
    of the profile's inputs is for a video. ``decoder``: the VideoReader decoder (None: FFmpeg)."""

    def __init__(self, path: str, decoder=None):
        self.path, self.decoder = path, decoder
        self._frames = None

    def take(self, n: int) -> list[tuple[InputRef, object]]:
        out: list = []
        for _ in range(2):  # the end of the video: once more from its start
            if self._frames is None:
                self._frames = iter_video_frames(self.path, self.decoder)
            out += [x for x in islice(self._frames, n - len(out)) if not isinstance(x, ErrorRecord)]
            if len(out) >= n:
                break
            self._frames = None
        return out


def decode_probe(path: str, nvdec_factory, frames: int = 120) -> dict:
    """ms per frame to decode ``frames`` frames of ``path`` as ``predict`` does: with FFmpeg (frame threads, RGB on
    the host), and, where ``nvdec_factory`` is given, with one NVDEC session (NV12 to RGB on the device)."""
    out = {}
    for name, decoder in (("cpu", None), ("nvdec", nvdec_factory)):
        if name == "nvdec" and decoder is None:
            continue
        source = VideoFrames(path, decoder)
        source.take(4)  # opened, the decoder made: its start is not a frame's cost
        t0 = time.perf_counter()
        got = len(source.take(frames))
        sync(decoder)
        out[f"{name}_ms_per_frame"] = (time.perf_counter() - t0) * 1e3 / max(1, got)
    return out


def sync(decoder) -> None:
    if decoder is not None:
        import torch

        torch.cuda.synchronize()
