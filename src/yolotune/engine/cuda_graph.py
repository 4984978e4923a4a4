"""Capture a whole detect step (model + post-processing) as CUDA graphs, one per static input buffer and shape.

The only host work per batch is then one ``replay()``; BASELINE.md measured yolov8n at batch 1 going from
5.6 ms eager (~250 kernel launches) to 1.2 ms replayed as one graph.
"""

from __future__ import annotations

from typing import Callable

import torch

from yolotune.capture_guard import CAPTURE_GUARD

StepFn = Callable[..., tuple[torch.Tensor, ...]]


class CudaGraphCache:
    """Runs ``fn(*tensors)`` from a CUDA graph captured the first time those static tensors (address, shape) are seen.

    Graphs share one memory pool: they replay one at a time on one stream, so intermediates can share memory,
    while each graph's outputs stay distinct (they are alive when the next graph is captured).
    """

    def __init__(self, fn: StepFn, modules: list[torch.nn.Module] | None = None, warmup: int = 3):
        self.fn = fn
        self.modules = modules or []
        self.warmup = warmup
        self.pool = torch.cuda.graph_pool_handle()
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, tuple[torch.Tensor, ...], list]] = {}

    def __len__(self) -> int:
        return len(self._graphs)

    @torch.inference_mode()
    def __call__(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        graph, outputs = self.graph_for(*tensors)
        graph.replay()
        return outputs

    @torch.inference_mode()
    def graph_for(self, *tensors: torch.Tensor) -> tuple[torch.cuda.CUDAGraph, tuple[torch.Tensor, ...]]:
        """The graph (captured now if new) for these static tensors, and its output tensors."""
        key = tuple((t.data_ptr(), tuple(t.shape), t.dtype) for t in tensors)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(tensors)
            self._graphs[key] = entry
        return entry[0], entry[1]

    def _capture(self, tensors: tuple[torch.Tensor, ...]):
        device = next(t.device for t in tensors if t.is_cuda)
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):  # cuDNN autotuning, Triton compilation, lazy buffers (anchors)
                self.fn(*tensors)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # "thread_local": CUDA calls other threads make meanwhile (the serve runtime page-locks decoder rings with
        # cudaHostRegister) must not invalidate this capture; the default "global" mode fails it
        with CAPTURE_GUARD.exclusive(), torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            outputs = self.fn(*tensors)
        # Modules may cache tensors per input shape (Ultralytics' anchors) and replace them when the shape
        # changes; the graph reads them by address, so keep this capture's tensors alive with the graph.
        keepalive = [v for m in self.modules for mod in m.modules() for v in vars(mod).values() if isinstance(v, torch.Tensor)]
        return graph, outputs, keepalive
