"""Which streams the GPU's NVDEC engines decode and which the CPU does.

A video stream goes to NVDEC (io/nvdec.py: decoded into device memory in a thread of the runtime, no frame copied
through the host) while NVDEC has room: up to ``limit`` streams, from plan's or the run's own measurement of what
the engines decode of such a stream, or every stream when no limit is known. The rest, and what NVDEC cannot
decode (image folders, V4L2 cameras' raw frames, codecs and formats it does not take, found when the stream opens),
are decoded on the CPU as before, so both work at once.
"""

from __future__ import annotations

import threading

from yolotune.io.stream_specs import SourceSpec

DECODE_CHOICES = ("auto", "nvdec", "cpu")


class DecodeRouter:
    """``factory``: io/nvdec.py's decoder factory (None: every stream on the CPU). ``limit``: streams NVDEC takes at
    most (None: all it can)."""

    def __init__(self, factory=None, limit: int | None = None):
        self.factory = factory
        self.limit = limit
        self.on_nvdec: set[int] = set()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.factory is not None and (self.limit is None or self.limit > 0)

    def take(self, i: int, spec: SourceSpec) -> bool:
        """Whether stream ``i`` is decoded on NVDEC (it is then counted until ``release``)."""
        if self.factory is None or spec.kind not in ("file", "url"):
            return False
        with self._lock:
            if i in self.on_nvdec:
                return True
            if self.limit is not None and len(self.on_nvdec) >= self.limit:
                return False
            self.on_nvdec.add(i)
            return True

    def retain(self, running: set[int]) -> None:
        """Forget the streams not in ``running`` (they ended): their room on NVDEC is free again."""
        with self._lock:
            self.on_nvdec &= running

    def release(self, i: int) -> None:
        with self._lock:
            self.on_nvdec.discard(i)


def nvdec_stream_limit(frames_per_s: float | None, stream_fps: float, margin: float = 0.85) -> int | None:
    """Streams of ``stream_fps`` NVDEC takes when it decodes ``frames_per_s`` of them in all, ``margin`` kept for
    bursts (None when nothing was measured)."""
    if not frames_per_s or stream_fps <= 0:
        return None
    return int(margin * frames_per_s / stream_fps)
