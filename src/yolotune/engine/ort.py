"""ONNX Runtime engine (CPU execution provider, or CUDA when onnxruntime-gpu is installed).

On the CPU a batch of several images is split across the cores, one single-threaded run per part, instead of one
run whose operators are each spread over the cores. An INT8 model is made of many small operators (quantize,
lookup sigmoid, requantizing concat), and waking and joining ONNX Runtime's thread pool for each is a large share
of their work. On 2 cores, batch 2: INT8 93 images/s split against 79 in one run, FP32 52 against 50
(benchmarks/results/optimize/ort_threads_cpu.json); batches 2-8: INT8 +17-25%, FP32 +9-26% (cpu_bench.json).
A lone image still uses every core.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from yolotune.engine.base import Engine, register_engine
from yolotune.interpreter import usable_cores
from yolotune.models.spec import LoadedModel


class OrtEngine(Engine):
    name = "onnxruntime"

    def __init__(self, model: LoadedModel):
        self.session = model.runnable
        self.spec = model.spec
        self.device = torch.device("cpu")
        self.input_dtype = torch.float16 if model.spec.input_dtype == "float16" else torch.float32
        self.fixed_batch = model.spec.fixed_batch
        self.fixed_hw = model.spec.fixed_hw
        self.input_name = model.spec.extra["input_name"]
        on_cpu = self.session.get_providers()[0] == "CPUExecutionProvider"
        threads = model.spec.extra.get("threads") or usable_cores()
        # how many parts a batch is split into, each run on one thread (1: no split)
        self.workers = threads if on_cpu and model.spec.extra.get("split_batch", True) and threads > 1 else 1
        self._single = None  # the single-threaded session the parts run on (one session serves concurrent runs)
        self._pool: ThreadPoolExecutor | None = None

    def describe(self) -> dict:
        return {**super().describe(), "split_batch": self.workers}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().cpu().numpy())
        n = arr.shape[0]
        # static-batch exports take `fixed_batch` images per run; a dynamic one takes a batch's share of the cores
        step = self.fixed_batch or -(-n // max(1, min(n, self.workers)))
        parts = []
        for start in range(0, n, step):
            part = arr[start : start + step]
            if part.shape[0] < step and self.fixed_batch:
                part = np.concatenate([part, np.repeat(part[-1:], step - part.shape[0], axis=0)])
            parts.append(part)
        if len(parts) > 1 and self.workers > 1:
            outputs = self._run_parallel(parts)
        else:
            outputs = [self.session.run(None, {self.input_name: p})[0] for p in parts]
        return torch.from_numpy(np.concatenate(outputs)[:n])

    def _run_parallel(self, parts: list[np.ndarray]) -> list[np.ndarray]:
        """Each worker's share of the parts (round robin) on one thread: this one runs the first share, pool threads
        the others (a pool left to map the parts itself sometimes ran them all on one thread)."""
        single, pool = self._parallel()
        k = min(self.workers, len(parts))

        def share(i: int) -> list[np.ndarray]:
            return [single.run(None, {self.input_name: p})[0] for p in parts[i::k]]

        futures = [pool.submit(share, i) for i in range(1, k)]
        shares = [share(0)] + [f.result() for f in futures]
        return [shares[j % k][j // k] for j in range(len(parts))]  # back in input order

    def _parallel(self):
        if self._single is None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            self._single = ort.InferenceSession(self.spec.path, sess_options=opts, providers=["CPUExecutionProvider"])
            self._pool = ThreadPoolExecutor(max_workers=self.workers - 1, thread_name_prefix="yolotune-ort")
        return self._single, self._pool


@register_engine("onnx")
def _build(model: LoadedModel, device: torch.device, precision: str, compile: bool = False, fuse: bool = True) -> Engine:
    return OrtEngine(model)
