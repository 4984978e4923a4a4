"""Stage spans on one clock: host work with perf_counter, GPU work with CUDA events mapped onto the host clock."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch


@dataclass
class Span:
    """One stage of one batch. Host times are perf_counter seconds; GPU times the same clock (None on CPU)."""

    stage: str
    batch: int
    images: int
    host_start: float
    host_enqueued: float  # the host returned from the stage's calls (GPU work may still run)
    host_end: float  # the stage's work finished (after a synchronize on the GPU)
    gpu_start: float | None = None
    gpu_end: float | None = None

    @property
    def wall_s(self) -> float:
        return self.host_end - self.host_start

    @property
    def gpu_s(self) -> float | None:
        return None if self.gpu_start is None else self.gpu_end - self.gpu_start

    def to_dict(self) -> dict:
        return {**vars(self), "wall_s": self.wall_s, "gpu_s": self.gpu_s}


class StageRecorder:
    """``with rec.stage("decode", batch, n):`` records a Span; stages are serialised (synchronised at their end) so
    each one's time is its own. With ``annotate``, each stage is also a torch.profiler range (kernel attribution)."""

    def __init__(self, device: torch.device, annotate: bool = False):
        self.device = device
        self.cuda = device.type == "cuda"
        self.annotate = annotate
        self.spans: list[Span] = []
        self._pending: list[tuple[Span, torch.cuda.Event, torch.cuda.Event]] = []
        if self.cuda:
            torch.cuda.synchronize(device)
            self._ref = torch.cuda.Event(enable_timing=True)
            self._ref.record()
            self._ref.synchronize()
            self._t_ref = time.perf_counter()

    @contextlib.contextmanager
    def stage(self, name: str, batch: int, images: int):
        ctx = torch.profiler.record_function(name) if self.annotate else contextlib.nullcontext()
        with ctx:
            start_ev = end_ev = None
            if self.cuda:
                start_ev = torch.cuda.Event(enable_timing=True)
                start_ev.record()
            t0 = time.perf_counter()
            yield
            t1 = time.perf_counter()
            if self.cuda:
                end_ev = torch.cuda.Event(enable_timing=True)
                end_ev.record()
                end_ev.synchronize()
            t2 = time.perf_counter()
        span = Span(name, batch, images, t0, t1, t2)
        self.spans.append(span)
        if self.cuda:
            self._pending.append((span, start_ev, end_ev))

    def finish(self) -> list[Span]:
        """Map the CUDA events onto the host clock and return the spans."""
        for span, a, b in self._pending:
            span.gpu_start = self._t_ref + self._ref.elapsed_time(a) / 1e3
            span.gpu_end = self._t_ref + self._ref.elapsed_time(b) / 1e3
        self._pending.clear()
        return self.spans
