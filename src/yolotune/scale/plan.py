"""``plan --ray``: how many streams of a size and frame rate fit on a Ray cluster, verified by running them there.

Each GPU type of the cluster is measured once, on its first stream actor (plan's figure: compute, decode, device
and host memory; serve/plan.py, without its own verification); every actor counts for its type's figure (times its
share of a GPU it shares), and the figures are summed. Then that many looped, real-time, lossless streams run on the
cluster (each actor plays a clip it generates on its own node: no path is shared between nodes), stepping down as
plan does until a run holds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from yolotune.io.stream_specs import SourceSpec
from yolotune.scale.cluster import connected
from yolotune.scale.run import ClusterOptions, drive, stream_cluster
from yolotune.scale.stream_actor import PLAN_CLIP
from yolotune.serve.plan import batch_wait_ms, resolution_problem, step_down, verification_row
from yolotune.serve.runtime import RunOptions


@dataclass
class ClusterPlanReport:
    address: str
    fps: float
    resolution: list[int]  # [width, height]
    capacities: dict[str, dict]  # GPU type -> what its first actor measured (StreamActor.capacity)
    actors: list[dict]  # each actor: device, GPU, node, frames/s it takes, streams that makes
    predicted_streams: int
    latency_budget_ms: float | None
    verification: list[dict] = field(default_factory=list)  # each run on the cluster (serve/plan.verification_row)
    verified_streams: int | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def plan_on_ray(model: str, fps: float, resolution: tuple[int, int], overrides: dict,
                cluster: ClusterOptions | None = None, verify: bool = True, verify_seconds: float = 20.0,
                latency_budget_ms: float | None = None, max_streams: int | None = None, queue_size: int = 4,
                max_wait_ms: float | None = None, progress=None) -> ClusterPlanReport:
    """``resolution`` is (width, height); ``overrides``: the actors' Detector options (device, batch, ...)."""
    width, height = resolution
    problem = resolution_problem(width, height)
    if problem:
        raise ValueError(problem)
    say = progress or (lambda _m: None)
    cluster = dataclasses.replace(cluster or ClusterOptions(), capacity={"fps": fps, "resolution": (width, height)})
    with connected(cluster.address, cluster.num_cpus) as ray:
        if not overrides.get("batch") and not Path(model, "yolotune.json").is_file():
            # plan's batches: the largest its sweep tries, 64 on GPUs, 8 on CPUs (an artifact brings its own)
            gpus = ray.cluster_resources().get("GPU", 0) and overrides.get("device") != "cpu"
            overrides = {**overrides, "batch": 64 if gpus else 8}
        options = RunOptions(out=None, max_batch=overrides.get("batch") or 64, queue_size=queue_size,
                             max_wait_ms=batch_wait_ms(max_wait_ms, latency_budget_ms, fps), duration_s=verify_seconds)
        say("starting the stream actors and measuring each GPU type")
        return _plan(model, fps, width, height, overrides, cluster, options, verify, verify_seconds,
                     latency_budget_ms, max_streams, say)


def _plan(model: str, fps: float, width: int, height: int, overrides: dict, cluster: ClusterOptions,
          options: RunOptions, verify: bool, verify_seconds: float, latency_budget_ms: float | None,
          max_streams: int | None, say) -> ClusterPlanReport:
    with stream_cluster(model, overrides, options, cluster) as (ray, controller):
        update = ray.get(controller.poll.remote())
        actors = [{**a, "streams": round(a["capacity_fps"] / fps, 2)} for a in update["actors"]]
        predicted = int(sum(a["capacity_fps"] for a in actors) / fps)
        if max_streams is not None:
            predicted = min(predicted, max_streams)
        report = ClusterPlanReport(cluster.address, fps, [width, height], update["capacities"], actors, predicted,
                                   latency_budget_ms)
        if verify and predicted > 0:
            trials = iter(range(1, 1000))

            def trial(n: int) -> dict:
                k = next(trials)
                specs = [SourceSpec(PLAN_CLIP, "file", f"v{k}-{i:03d}", loop=True, realtime=True, lossless=True)
                         for i in range(n)]
                loads: dict[str, float] = {}  # frames/s placed on each actor

                def seen(update: dict) -> None:
                    for a in update["actors"]:
                        loads[a["actor"]] = max(loads.get(a["actor"], 0.0), a["load_fps"])

                summary = drive(ray, controller, specs, options, on_poll=seen, clip=(width, height, fps),
                                keep_actors=True)
                row = verification_row(summary, n, fps, verify_seconds, latency_budget_ms)
                row["actors_load_fps"] = loads
                return row

            report.verification = step_down(predicted, trial, fps, latency_budget_ms, verify_seconds, say)
            held = [r["streams"] for r in report.verification if r["holds"]]
            report.verified_streams = max(held) if held else 0
    return report
