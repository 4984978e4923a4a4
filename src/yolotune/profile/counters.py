"""GPU counters sampled with NVML (nvidia-ml-py) in a background thread while the profile runs."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import torch


@dataclass
class CounterSeries:
    """Samples over time: utilisation (% of time a kernel ran), memory-controller busy % (NVML's memory
    bandwidth utilisation), SM clock (MHz), memory used (MiB), power (W). ``available`` is False without NVML."""

    available: bool = False
    reason: str = ""
    t: list[float] = field(default_factory=list)  # perf_counter seconds
    gpu_util: list[float] = field(default_factory=list)
    mem_util: list[float] = field(default_factory=list)
    sm_clock_mhz: list[float] = field(default_factory=list)
    mem_used_mib: list[float] = field(default_factory=list)
    power_w: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(vars(self))

    def window(self, start: float, end: float, name: str) -> list[float]:
        return [v for t, v in zip(self.t, getattr(self, name)) if start <= t <= end]

    def mean(self, name: str, start: float | None = None, end: float | None = None) -> float | None:
        vals = self.window(start if start is not None else -1e30, end if end is not None else 1e30, name)
        return sum(vals) / len(vals) if vals else None


class NvmlSampler:
    """``with NvmlSampler(device) as s: ...`` then ``s.series``. Samples every ``interval_s`` (default 20 ms)."""

    def __init__(self, device: torch.device, interval_s: float = 0.02):
        self.device = device
        self.interval_s = interval_s
        self.series = CounterSeries()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml = None
        self._handle = None

    def __enter__(self) -> "NvmlSampler":
        if self.device.type != "cuda":
            self.series.reason = "CPU run: no GPU counters"
            return self
        try:
            import pynvml

            pynvml.nvmlInit()
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(_physical_index(index))
        except Exception as e:  # no driver library, no permission, not installed
            self.series.reason = f"NVML unavailable: {type(e).__name__}: {e}"
            return self
        self.series.available = True
        self._thread = threading.Thread(target=self._run, name="yolotune-nvml", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        nv, h, s = self._nvml, self._handle, self.series
        while not self._stop.is_set():
            try:
                util = nv.nvmlDeviceGetUtilizationRates(h)
                mem = nv.nvmlDeviceGetMemoryInfo(h)
                clock = nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)
                try:
                    power = nv.nvmlDeviceGetPowerUsage(h) / 1000.0
                except Exception:
                    power = float("nan")
            except Exception as e:
                s.reason = f"NVML sampling stopped: {e}"
                return
            s.t.append(time.perf_counter())
            s.gpu_util.append(float(util.gpu))
            s.mem_util.append(float(util.memory))
            s.sm_clock_mhz.append(float(clock))
            s.mem_used_mib.append(mem.used / 2**20)
            s.power_w.append(power)
            self._stop.wait(self.interval_s)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass


def _physical_index(index: int) -> int:
    """NVML numbers GPUs physically; CUDA_VISIBLE_DEVICES may renumber them."""
    import os

    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    parts = [p.strip() for p in visible.split(",") if p.strip()]
    if parts and index < len(parts) and parts[index].isdigit():
        return int(parts[index])
    return index
