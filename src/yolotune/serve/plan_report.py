"""PlanReport: how many streams fit, what bounds them, and the runs that verified it; ``to_dict`` is plan's JSON."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class PlanReport:
    device: str
    gpus: int
    fps: float
    resolution: list[int]  # [width, height]
    reserve: float  # memory kept free (the share of each total)
    cpu_cores: int
    sweep: list[dict]  # the detect step per batch: frames/s, latency, device memory per frame
    best_batch: int
    knee_batch: int  # profile/sweep.py's knee rule
    batch: int  # what the plan runs at: the knee with a latency budget, else the best
    frames_per_s: float  # the compute side at that batch
    decode_fps_per_core: float
    decode_cores: int
    host_pipeline_fps: float  # decoding and handing over, many streams at once, no model
    host_pipeline_errors: list[str]
    host_bytes_per_stream: int
    device_bytes_per_stream: int | None
    total_host_bytes: int
    total_device_bytes: int | None
    limits: dict[str, float]  # streams each resource allows
    binding: str  # the resource with the lowest limit
    predicted_streams: int
    latency_budget_ms: float | None
    verification: list[dict] = field(default_factory=list)  # each verification run (serve/plan.py _verify)
    verified_streams: int | None = None
    one_stream: dict | None = None  # where none fits: the frame rate one stream fits at, and what bounds it
    # where the GPU has NVDEC: frames/s its decoder processes deliver, the streams it takes (run --nvdec-streams),
    # its engines and the device memory an NVDEC stream holds (serve/plan.py _nvdec_side)
    nvdec: dict | None = None
    clip: str = "generated, camera-like"  # what each stream was: a recording's path, or plan's generated clip
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if self.one_stream is None:
            d.pop("one_stream")
        if self.nvdec is None:
            d.pop("nvdec")
        if not self.notes:
            d.pop("notes")
        return d
