"""PyTorch engine: Conv+BN fused, FP16/BF16 on CUDA (FP32 on CPU), channels_last; eager, torch.compile (JIT) or
AOTInductor (ahead of time, packaged)."""

from __future__ import annotations

import os
import warnings

import torch

from yolotune.engine.aoti import AotiRunner
from yolotune.engine.precompiled import PrecompiledRunner, PrecompileUnsupported
from yolotune.engine.base import PRECISIONS, Engine, register_engine
from yolotune.models.spec import LoadedModel


class TorchEngine(Engine):
    name = "torch"
    graph_capturable = True

    def __init__(self, model: LoadedModel, device: torch.device, precision: str = "fp16", channels_last: bool = True,
                 compile: bool | str = False, fuse: bool = True):
        module = model.runnable
        inner = getattr(module, "model", module)
        if fuse and hasattr(inner, "fuse"):
            inner.fuse(verbose=False)  # Conv+BN -> one conv: fewer kernels, same math
        self.device = device
        self.input_dtype = PRECISIONS[precision]
        self.channels_last = channels_last
        module = module.to(device=device, dtype=self.input_dtype).eval()
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
        for p in module.parameters():
            p.requires_grad_(False)
        self.module = module
        self.compile_mode = compile_mode(compile)
        self.aoti = AotiRunner(module) if self.compile_mode == "aoti" else None
        # Inductor, batch dimension dynamic (see __call__): a compile costs tens of seconds, so not one per batch
        # bucket; the CUDA graph cache then replays the compiled kernels. Coordinate-descent tuning of the kernels'
        # block sizes pays for its longer compile, freezing did not (optimize/compile_options_h100.json).
        self.compile_options = {"coordinate_descent_tuning": compile != "inductor-untuned"}
        self.compiled = None  # the JIT torch.compile, made at the first call that needs it
        self.precompiled: PrecompiledRunner | None = None
        self.precompile_error: str | None = None
        if self.compile_mode == "inductor":
            import torch._dynamo as dynamo  # "as": a plain import would make `torch` local to this function

            for limit in ("recompile_limit", "cache_size_limit"):
                if hasattr(dynamo.config, limit):
                    setattr(dynamo.config, limit, max(64, getattr(dynamo.config, limit)))
            # compiled ahead of time and saved, so a new process loads it instead of tracing and compiling again;
            # where this torch cannot, the JIT compile (engine/precompiled.py)
            try:
                self.precompiled = PrecompiledRunner(module, self.compile_options)
            except PrecompileUnsupported as e:
                self.precompile_error = str(e)
        self.name = {"inductor": "torch-compiled", "aoti": "torch-aoti"}.get(self.compile_mode, "torch")
        self.static_canvas = self.compile_mode is not None  # each input size is one more compile
        # torch.compile specialises batch 1 (a second compile): with a larger batch, a lone image runs padded to 2
        # through the one compile that serves every other size
        self.min_batch = 2 if self.compile_mode == "inductor" else 1
        if device.type == "cuda":
            # shapes are fixed per batch bucket; YOLOTUNE_CUDNN_BENCHMARK=0 skips the autotuning (faster start)
            torch.backends.cudnn.benchmark = os.environ.get("YOLOTUNE_CUDNN_BENCHMARK", "1") != "0"

    def describe(self) -> dict:
        out = super().describe()
        if self.compile_mode == "inductor":
            # how the compiled code got here: loaded from saved files, compiled ahead of time now, or in-process JIT
            out["ahead_of_time"] = None if self.precompiled is None else self.precompiled.loads
            out["ahead_of_time_error"] = self.precompile_error
        return out

    def warm_start(self, batch: int, hw: tuple[int, int]) -> bool:
        """Before the first call at ``batch`` on an ``hw`` canvas: load the saved compiled function in a background
        thread while cuDNN autotunes this batch's convolutions here, in eager mode (autotuning runs in C++ with the
        interpreter released, loading is mostly Python, so the two overlap; the compiled code calls the same
        convolutions, so its first call finds them tuned). Only where a saved function exists: a first compile
        has nothing to overlap. YOLOTUNE_WARM_START=0 turns it off. True when it ran."""
        if self.precompiled is None or self.device.type != "cuda" or os.environ.get("YOLOTUNE_WARM_START", "1") == "0":
            return False
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        # a normal tensor, not an inference one: the Detector's input buffers are, and the guards tell them apart
        x = torch.zeros(batch, 3, *hw, dtype=self.input_dtype, device=self.device).contiguous(memory_format=memory_format)
        if not self.precompiled.preload(x):
            return False
        if torch.backends.cudnn.benchmark:
            with torch.inference_mode():
                self.module(x)
            torch.cuda.synchronize(self.device)
            del x
            torch.cuda.empty_cache()  # the eager activations' memory: the CUDA graphs keep a pool of their own
        return True

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.aoti is not None:
            return self.aoti(x)
        if self.compile_mode is None:
            return self.module(x)
        if self.precompiled is not None:
            try:
                return self.precompiled(x)
            except torch.OutOfMemoryError:
                raise
            except Exception as e:  # noqa: BLE001  (an experimental API: the JIT compile still gives the speed)
                self.precompile_error = f"{type(e).__name__}: {str(e)[:300]}"
                self.precompiled = None
                warnings.warn(f"compiling ahead of time failed, compiling in process instead: {self.precompile_error}")
        if self.compiled is None:
            self.compiled = torch.compile(self.module, options=self.compile_options)
        # Batch size as a dynamic dimension from the first call: one shape-generic compile serves every batch
        # bucket (batch 1 still gets its own), and a reload in a new process hits the same cache entry.
        torch._dynamo.maybe_mark_dynamic(x, 0)
        # height and width stay static: a second canvas (rect) is a second specialised compile, not one generic
        # kernel set that dynamo's automatic dynamic shapes would make after the first shape change
        torch._dynamo.mark_static(x, 2)
        torch._dynamo.mark_static(x, 3)
        return self.compiled(x)


def compile_mode(compile: bool | str | None) -> str | None:
    """Detector's ``compile`` option: False/None (eager), True or "inductor" (torch.compile, kernels' block sizes
    tuned), "inductor-untuned" (~20 s less to compile, ~9% slower), "aoti" (AOTInductor)."""
    if compile in (False, None, "none", "off"):
        return None
    if compile in (True, "inductor", "jit", "inductor-untuned"):  # untuned: no search of the kernels' block sizes
        return "inductor"
    if compile == "aoti":
        return "aoti"
    raise ValueError(f"compile must be False, True/'inductor' or 'aoti', not {compile!r}")


@register_engine("ultralytics")
def _build(model: LoadedModel, device: torch.device, precision: str, compile: bool | str = False,
           fuse: bool = True) -> Engine:
    if device.type == "cpu" and precision != "fp32":
        precision = "fp32"  # half-precision convolutions on CPU are slower and less accurate
    return TorchEngine(model, device, precision, compile=compile, fuse=fuse)
