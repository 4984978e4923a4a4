"""torch.compile ahead of time: captured and compiled once, saved on disk, loaded again without tracing or compiling.

A plain ``torch.compile`` must trace the model again in every new process and look its kernels up in Inductor's
cache: tens of seconds from ``Detector(artifact)`` to its first detections
(benchmarks/results/optimize/reload_diag_h100.json). ``torch.compile(...).aot_compile`` captures the whole graph with its guards and the compiled code
(kernels included); ``torch.compiler.load_compiled_function`` brings it back as a callable. Each saved function
serves the batch sizes its guards accept (one for batch 1, which the compiler specialises, one for the others);
an input no saved function accepts is compiled and saved too.

Files live in the engine cache (an artifact's ``engines/`` folder while it is tuned or loaded), named by the same
key as AOTInductor packages: weights, structure, input shape but batch, dtype, torch and GPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Callable

import torch

from yolotune.engine.aoti import cache_root, package_key
from yolotune.engine.tracing import make_heads_traceable

SUFFIX = ".tcf"  # a torch.compile'd function, serialised


class PrecompileUnsupported(RuntimeError):
    """This torch cannot compile ahead of time (or not this model): the caller uses the plain JIT compile."""


def supported() -> str | None:
    """None when this torch has the ahead-of-time API, else why not."""
    if not hasattr(torch.compiler, "load_compiled_function"):
        return f"torch {torch.__version__} has no torch.compiler.load_compiled_function"
    return None


class PrecompiledRunner:
    """Calls ``module`` through ahead-of-time compiled functions, loaded from the cache or compiled (and saved) at
    the first input none of them accepts. ``loads`` records each file's load or build:
    {"file", "built", "seconds"}."""

    def __init__(self, module: torch.nn.Module, options: dict | None = None):
        why = supported()
        if why:
            raise PrecompileUnsupported(why)
        make_heads_traceable(module)  # before the first key: the key hashes the module's structure
        self.module = module
        self.options = dict(options or {})
        self.cache = cache_root()  # now: an artifact being loaded has just pointed the cache into itself
        self._functions: dict[tuple, list[Callable]] = {}  # by input group: the saved functions loaded so far
        self._unloaded: dict[tuple, list[Path]] = {}  # by input group: saved files not loaded yet
        self._chosen: dict[tuple, Callable] = {}  # by whole shape: which function took it (its own call checks again)
        self._built_with_threads: dict[int, int] = {}  # id(function) -> torch's CPU thread count when it was compiled
        self._loading: dict[tuple, threading.Thread] = {}  # by input group: a background load (preload)
        self.loads: list[dict] = []

    @staticmethod
    def _group(x: torch.Tensor) -> tuple:
        # the guards also check the tensor's dispatch keys: an inference tensor and a normal one (the Detector's
        # static buffers are made outside inference mode) are two groups
        return tuple(x.shape[1:]), x.dtype, x.device, x.is_inference()

    def saved(self, x: torch.Tensor) -> list[Path]:
        """The saved functions that may serve inputs like ``x``."""
        return sorted(self.cache.glob(f"{self._stem(x)}-*{SUFFIX}"))

    def preload(self, x: torch.Tensor) -> bool:
        """Start loading, in a background thread, the saved function that serves ``x``; the first call waits for
        it. Loading is mostly Python (seconds), so the caller can meanwhile run GPU work that releases
        the interpreter (engine.warm_start: cuDNN's autotuning). False when nothing is saved."""
        group = self._group(x)
        if group in self._functions or group in self._loading or not self.saved(x):
            return False

        def load() -> None:
            # as the engine calls: in inference mode, whose dispatch keys a loaded function's guards take from the
            # thread that loads it (loaded outside it, every call was rejected and compiled again)
            with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext(), torch.inference_mode():
                self._find(x)

        thread = self._loading[group] = threading.Thread(target=load, name="yolotune-preload", daemon=True)
        thread.start()
        return True

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        group = self._group(x)
        chosen = self._chosen.get((x.shape[0], group))
        if chosen is not None:  # a function's own call checks its guards: not a second time here
            return chosen(self.module, x)
        thread = self._loading.pop(group, None)
        if thread is not None:
            thread.join()
        fn = self._find(x)
        if fn is None:
            functions = self._functions[group]
            rejected = [_why_rejected(f, self.module, x) for f in functions]  # why the saved ones did not serve
            fn = self._build(x, index=len(functions))
            functions.append(fn)
            if rejected:
                self.loads[-1]["others_rejected_because"] = rejected
        self._chosen[(x.shape[0], group)] = fn
        return fn(self.module, x)

    def _stem(self, x: torch.Tensor) -> str:
        tuned = "tuned" if self.options.get("coordinate_descent_tuning") else "untuned"  # other kernels, other file
        return f"{package_key(self.module, x)}-{tuned}-{'inference' if x.is_inference() else 'normal'}"

    def _find(self, x: torch.Tensor) -> Callable | None:
        """A loaded function that accepts ``x``, else the first saved one that does, loading files in order and
        stopping there: each load costs up to seconds, and an artifact may hold functions for other batch
        sizes (batch 1's) that this process never needs."""
        group = self._group(x)
        functions = self._functions.setdefault(group, [])
        fn = next((f for f in functions if self._accepts(f, x)), None)
        if group not in self._unloaded:
            self._unloaded[group] = self.saved(x)
        unloaded = self._unloaded[group]
        while fn is None and unloaded:
            loaded = self._load(unloaded.pop(0))
            if loaded is not None:
                functions.append(loaded)
                fn = loaded if self._accepts(loaded, x) else None
        return fn

    def _load(self, path: Path) -> Callable | None:
        t0 = time.perf_counter()
        try:
            fn = _load(path)
        except Exception as e:  # noqa: BLE001  (a file from another torch or GPU: compiled again instead)
            self.loads.append({"file": path.name, "built": False, "error": f"{type(e).__name__}: {str(e)[:200]}"})
            return None
        self.loads.append({"file": path.name, "built": False, "seconds": round(time.perf_counter() - t0, 3)})
        threads = _read_threads(path)
        if threads is not None:
            self._built_with_threads[id(fn)] = threads
        return fn

    def _accepts(self, fn, x: torch.Tensor) -> bool:
        """Whether ``fn``'s guards accept this call. Among them is torch's CPU thread count when it was compiled
        (dynamo's global state), which an application or a library may set otherwise (optimize's process runs
        with another count than a fresh one, and a reload would compile again). It can
        change the speed of CPU kernels, never a result, and not CUDA kernels at all: where only it differs, the
        function is accepted and its own call stops checking guards (each new input shape is still checked here
        first)."""
        if fn.guard_check(self.module, x):
            return True
        threads = self._built_with_threads.get(id(fn))
        if threads is None or threads == torch.get_num_threads():
            return False
        now = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            ok = bool(fn.guard_check(self.module, x))
        finally:
            torch.set_num_threads(now)
        if ok and hasattr(fn, "disable_guard_check"):
            fn.disable_guard_check()
            return True
        return False

    def _build(self, x: torch.Tensor, index: int) -> Callable:
        t0 = time.perf_counter()
        with torch.inference_mode(x.is_inference()):
            example = x.clone()  # the same kind of tensor as it will be called with
        if x.shape[0] != 1:
            # one function for every batch size but 1, which the compiler specialises (its own function). An
            # unbacked batch size would serve 1 too, but convolutions' output layouts are then unknown when tracing
            # and the compiled code asserts on them.
            torch._dynamo.maybe_mark_dynamic(example, 0)
        torch._dynamo.mark_static(example, 2)
        torch._dynamo.mark_static(example, 3)
        with _aot_enabled():  # torch 2.11 attaches aot_compile only with this flag set
            compiled = torch.compile(self.module, fullgraph=True, options=self.options)
        aot_compile = getattr(compiled.forward, "aot_compile", None)
        if aot_compile is None:
            raise PrecompileUnsupported(f"torch {torch.__version__}: no torch.compile().aot_compile")
        with _aot_enabled(), torch.inference_mode():
            fn = aot_compile(((example,), {}))
        path = self.cache / f"{self._stem(x)}-{index:02d}-b{'1' if x.shape[0] == 1 else 'N'}{SUFFIX}"
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f".{path.name}.{os.getpid()}")
        fn.save_compiled_function(str(part))
        path.with_name(path.name + ".json").write_text(json.dumps({"torch_threads": torch.get_num_threads()}))
        os.replace(part, path)  # atomic: a half-written file is never found
        # Run what the next process will load, not what was just compiled: a loaded function's tuned kernels live
        # at other paths, whose block-size tuning is then recorded where later loads look, not redone by the first
        # process to load it (benchmarks/results/optimize/reload_diag_h100_first_warm_profiled.json).
        try:
            fn = _load(path)
        except Exception:  # noqa: BLE001  (kept as compiled; a later process reports the load's error)
            pass
        self._built_with_threads[id(fn)] = torch.get_num_threads()
        self.loads.append({"file": path.name, "built": True, "seconds": round(time.perf_counter() - t0, 3)})
        return fn


def _read_threads(path: Path) -> int | None:
    """torch's CPU thread count recorded beside a saved function when it was compiled (None: not recorded)."""
    try:
        return int(json.loads(path.with_name(path.name + ".json").read_text())["torch_threads"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _load(path: Path) -> Callable:
    with open(path, "rb") as f, _aot_enabled():
        return torch.compiler.load_compiled_function(f)


def _aot_enabled():
    """torch._dynamo.config.enable_aot_compile on for the duration, where this torch has the flag."""
    cfg = torch._dynamo.config
    return cfg.patch(enable_aot_compile=True) if hasattr(cfg, "enable_aot_compile") else contextlib.nullcontext()


def _why_rejected(fn, module: torch.nn.Module, x: torch.Tensor) -> str:
    """The first guard of ``fn`` that this call fails, in dynamo's words (for the report)."""
    try:
        info = fn._artifacts.guard_manager.check_verbose(fn.prepare_f_locals(module, x))
        parts = getattr(info, "verbose_code_parts", None)
        return (" / ".join(str(p) for p in parts) if parts else str(info))[:300]
    except Exception as e:  # noqa: BLE001  (torch internals: a report detail, never a failure)
        return f"unknown ({type(e).__name__})"
