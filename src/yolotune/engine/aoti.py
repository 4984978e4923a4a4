"""Ahead-of-time compiled models: torch.export + AOTInductor, packaged once, reloaded in about a second.

``torch.compile`` keeps its kernels in a cache keyed by the traced program, and a fresh process must trace and
look the program up again (benchmarks/results/optimize/aoti_diag_h100.json). An AOTInductor package is a
shared library plus weights: loading it is a ``dlopen``. One package serves every batch size (the batch dimension
is exported as dynamic) at one input size; packages are cached on disk under a key of everything that changes
the generated code, so the same model, precision and size is compiled once per machine (or once per artifact).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import torch

from yolotune.engine.tracing import traceable_heads
from yolotune.models.artifact import ENGINE_CACHE_ENV

MAX_BATCH = 1024  # the exported batch range [1, MAX_BATCH]


def cache_root() -> Path:
    """Where packages live: $YOLOTUNE_ENGINE_CACHE (an artifact points it at its own folder) or ~/.cache/yolotune."""
    env = os.environ.get(ENGINE_CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "yolotune" / "engines"


def package_key(module: torch.nn.Module, example: torch.Tensor) -> str:
    """Hash of the weights, the structure, the input (shape but batch, dtype, layout), torch and the GPU."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update(repr(module).encode())
    dev = example.device
    arch = torch.cuda.get_device_name(dev) + str(torch.cuda.get_device_capability(dev)) if dev.type == "cuda" else "cpu"
    channels_last = example.is_contiguous(memory_format=torch.channels_last) and not example.is_contiguous()
    h.update(f"{tuple(example.shape[1:])}|{example.dtype}|{channels_last}|{torch.__version__}|{arch}".encode())
    return h.hexdigest()[:24]


class AotiRunner:
    """Calls ``module`` through an AOTInductor package built (or found in the cache) at the first call per input
    size. ``last_build`` tells what the first call cost: {"built": bool, "seconds": float, "path": str}."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.cache = cache_root()  # now: an artifact being loaded has just pointed the cache into itself
        self._compiled: dict[tuple, Callable] = {}
        self.last_build: dict = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape[1:]), x.dtype, x.device)
        fn = self._compiled.get(key)
        if fn is None:
            fn = self._compiled[key] = self._load_or_build(x)
        return fn(x)

    def _load_or_build(self, x: torch.Tensor) -> Callable:
        from torch._inductor import aoti_compile_and_package, aoti_load_package

        t0 = time.perf_counter()
        path = self.cache / f"{package_key(self.module, x)}.pt2"
        built = not path.is_file()
        if built:
            path.parent.mkdir(parents=True, exist_ok=True)
            program = export_program(self.module, x)
            with tempfile.TemporaryDirectory(dir=path.parent) as tmp:  # atomic: a half-written package is never found
                part = Path(tmp) / path.name
                aoti_compile_and_package(program, package_path=str(part))
                os.replace(part, path)
        check_loads(path)
        fn = aoti_load_package(str(path))
        self.last_build = {"built": built, "seconds": time.perf_counter() - t0, "path": str(path)}
        return fn


def check_loads(path: Path) -> None:
    """Load the package once in a child process before this one does, and remember that it worked.

    Loading a package can crash the process outright (a segfault inside ``aoti_load_package``:
    benchmarks/results/optimize/aoti_diag_h100.json). A segfault cannot be caught, so the child takes it and this process gets an exception the optimizer reports
    (and then tries torch.compile)."""
    ok = path.with_suffix(".loads")
    if ok.is_file():
        return
    code = "import sys, torch; from torch._inductor import aoti_load_package; aoti_load_package(sys.argv[1])"
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=600)
    if r.returncode:
        why = f"signal {-r.returncode}" if r.returncode < 0 else f"exit {r.returncode}: {(r.stderr.strip().splitlines() or [''])[-1][-300:]}"
        raise RuntimeError(f"the AOTInductor package {path.name} does not load on torch {torch.__version__} "
                           f"(checked in a child process: {why}); use compile='inductor'")
    ok.write_text(torch.__version__)


def export_program(module: torch.nn.Module, x: torch.Tensor):
    """torch.export of ``module`` at ``x``'s shape with the batch dimension dynamic in [1, MAX_BATCH]."""
    example = x[:2].clone() if x.shape[0] >= 2 else torch.cat([x, x])  # batch 2: not specialised like 1
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with traceable_heads(module), torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assigned during export")  # the anchor caches, restored
        example = example.clone()  # inference-mode tensors cannot be traced
        return torch.export.export(module, (example,), dynamic_shapes=({0: batch},), strict=False)
