"""Device peaks (a table of known GPUs, and a micro-benchmark everywhere) and roofline positions of measured work."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from yolotune.profile.probes import time_per_call

# Dense (no sparsity) tensor-core peaks and memory bandwidth from the vendors' data sheets, by device-name substring.
# Most specific names first. Units: TFLOP/s and GB/s.
KNOWN_DEVICES: list[tuple[str, dict[str, float]]] = [
    ("H200", {"fp16": 989.4, "bf16": 989.4, "tf32": 494.7, "fp32": 66.9, "int8": 1978.9, "bandwidth": 4800.0}),
    ("H100 NVL", {"fp16": 835.5, "bf16": 835.5, "tf32": 417.5, "fp32": 60.0, "int8": 1670.9, "bandwidth": 3900.0}),
    ("H100 PCIe", {"fp16": 756.5, "bf16": 756.5, "tf32": 378.0, "fp32": 51.2, "int8": 1513.0, "bandwidth": 2000.0}),
    ("H100", {"fp16": 989.4, "bf16": 989.4, "tf32": 494.7, "fp32": 66.9, "int8": 1978.9, "bandwidth": 3350.0}),
    ("A100-SXM4-80GB", {"fp16": 312.0, "bf16": 312.0, "tf32": 156.0, "fp32": 19.5, "int8": 624.0, "bandwidth": 2039.0}),
    ("A100", {"fp16": 312.0, "bf16": 312.0, "tf32": 156.0, "fp32": 19.5, "int8": 624.0, "bandwidth": 1555.0}),
    ("L40S", {"fp16": 362.1, "bf16": 362.1, "tf32": 183.0, "fp32": 91.6, "int8": 733.0, "bandwidth": 864.0}),
    ("L4", {"fp16": 121.0, "bf16": 121.0, "tf32": 60.0, "fp32": 30.3, "int8": 242.0, "bandwidth": 300.0}),
    ("A10", {"fp16": 125.0, "bf16": 125.0, "tf32": 62.5, "fp32": 31.2, "int8": 250.0, "bandwidth": 600.0}),
    ("T4", {"fp16": 65.0, "fp32": 8.1, "int8": 130.0, "bandwidth": 320.0}),
    ("RTX 4090", {"fp16": 165.2, "bf16": 165.2, "tf32": 82.6, "fp32": 82.6, "int8": 660.6, "bandwidth": 1008.0}),
]


@dataclass
class DevicePeaks:
    """Peak compute for the run's precision (FLOP/s) and memory bandwidth (B/s) used for the roofline."""

    device: str
    precision: str
    flops: float
    bandwidth: float
    source: str  # "datasheet" or "measured"
    measured_flops: float
    measured_bandwidth: float

    @property
    def ridge(self) -> float:
        """Arithmetic intensity (FLOP/byte) above which work is compute-bound."""
        return self.flops / self.bandwidth

    def to_dict(self) -> dict:
        return {**vars(self), "ridge": self.ridge}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def datasheet_peaks(name: str, precision: str) -> tuple[float, float] | None:
    for key, peaks in KNOWN_DEVICES:
        if key in name:
            flops = peaks.get(precision) or peaks.get("fp16")
            return flops * 1e12, peaks["bandwidth"] * 1e9
    return None


def measure_peaks(device: torch.device, dtype: torch.dtype) -> tuple[float, float]:
    """Achievable FLOP/s (square matmul) and bandwidth (device-to-device copy, read + write) on ``device``."""
    cuda = device.type == "cuda"
    n = 8192 if cuda else 2048
    mm_dtype = dtype if cuda else torch.float32
    a = torch.randn(n, n, device=device, dtype=mm_dtype)
    b = torch.randn(n, n, device=device, dtype=mm_dtype)
    src = torch.empty(256 * 2**20 if cuda else 64 * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)

    flops = 2 * n**3 / min(time_per_call(lambda: a @ b, device, 10 if cuda else 2) for _ in range(2))
    if not cuda:  # oneDNN convolutions can beat sgemm on CPUs: take the faster of the two as the roof
        x = torch.randn(1, 64, 160, 160)
        w = torch.randn(64, 64, 3, 3)
        conv_s = min(time_per_call(lambda: torch.nn.functional.conv2d(x, w, padding=1), device, 3) for _ in range(2))
        flops = max(flops, 2 * 64 * 64 * 9 * 160 * 160 / conv_s)
    bandwidth = 2 * src.numel() / time_per_call(lambda: dst.copy_(src), device, 20 if cuda else 5)
    del a, b, src, dst
    return flops, bandwidth


def device_peaks(device: torch.device, precision: str) -> DevicePeaks:
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
    name = device_name(device)
    m_flops, m_bw = measure_peaks(device, dtype)
    sheet = datasheet_peaks(name, "tf32" if precision == "fp32" else precision) if device.type == "cuda" else None
    if sheet is not None:
        return DevicePeaks(name, precision, sheet[0], sheet[1], "datasheet", m_flops, m_bw)
    return DevicePeaks(name, precision, m_flops, m_bw, "measured", m_flops, m_bw)


@dataclass
class RooflinePoint:
    """Measured work on the roofline: FLOPs and bytes per batch, its time, and what bounds it."""

    name: str
    flops: float
    bytes: float
    seconds: float

    def intensity(self) -> float:
        return self.flops / self.bytes if self.bytes else 0.0

    def achieved_flops(self) -> float:
        return self.flops / self.seconds if self.seconds > 0 else 0.0

    def achieved_bandwidth(self) -> float:
        return self.bytes / self.seconds if self.seconds > 0 else 0.0

    def evaluate(self, peaks: DevicePeaks) -> dict:
        ai = self.intensity()
        attainable = min(peaks.flops, ai * peaks.bandwidth)
        achieved = self.achieved_flops()
        return {
            "name": self.name,
            "flops": self.flops,
            "bytes": self.bytes,
            "seconds": self.seconds,
            "intensity": ai,
            "achieved_tflops": achieved / 1e12,
            "achieved_gbps": self.achieved_bandwidth() / 1e9,
            "attainable_tflops": attainable / 1e12,
            "fraction_of_roof": achieved / attainable if attainable else 0.0,
            "bound": "memory" if ai < peaks.ridge else "compute",
        }


def flops_words(flop_per_s: float) -> str:
    """A compute rate in the unit that fits it: a CPU's GFLOP/s, a GPU's TFLOP/s."""
    return f"{flop_per_s / 1e12:.1f} TFLOP/s" if flop_per_s >= 1e12 else f"{flop_per_s / 1e9:.1f} GFLOP/s"


def bandwidth_words(byte_per_s: float) -> str:
    return f"{byte_per_s / 1e9:.0f} GB/s" if byte_per_s >= 10e9 else f"{byte_per_s / 1e9:.2f} GB/s"
