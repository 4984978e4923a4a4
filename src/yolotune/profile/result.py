"""ProfileReport: everything one ``profile()`` run measured and found; ``to_dict`` is profile.json."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from yolotune.profile.diagnose import Finding

PROFILE_VERSION = 1


@dataclass
class ProfileReport:
    created: str
    model: str
    pipeline: str  # the preset: "plain" or "optimized"
    device: dict  # name, type, memory, SMs, torch / CUDA / Python versions
    options: dict  # the Detector's options and what it made of them (describe())
    inputs: dict  # images, distinct files, mean file size
    stages: list[dict] = field(default_factory=list)  # per stage: ms/image (mean, p50, spread), GPU time, share
    serial_ms_per_image: float = 0.0
    kernels: dict | None = None  # per stage: launches, GPU busy time (a torch.profiler pass)
    launches_per_image: float | None = None
    layers: list[dict] = field(default_factory=list)  # per layer: FLOPs, bytes, eager time
    roofline: dict = field(default_factory=dict)
    probes: dict = field(default_factory=dict)  # what a recommendation would change, measured on its own
    e2e: dict = field(default_factory=dict)  # the real overlapped pipeline: images/s and spread
    sweep: dict | None = None  # batch sweep points, the knee, and why it stopped
    verify: list[dict] | None = None  # each recommendation run: predicted vs measured gain
    counters: dict = field(default_factory=dict)  # NVML series and their means over the end-to-end run
    timeline: list[list] = field(default_factory=list)  # [stage, batch, images, host and GPU times] per span
    phases: list[dict] = field(default_factory=list)  # the profiler's own phases, for the trace
    findings: list[Finding] = field(default_factory=list)
    version: int = PROFILE_VERSION

    def to_dict(self) -> dict:
        """profile.json: what the report, the trace, ``compare`` and ``diagnose`` read."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["findings"] = [f.to_dict() for f in self.findings]
        return {k: v for k, v in d.items() if v is not None}
