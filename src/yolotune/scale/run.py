"""``run --ray``: many streams over a Ray cluster's GPUs (or CPUs), written here like plain ``run``'s.

The driver starts a controller actor (scale/controller.py), which starts the stream actors, measures their capacity
and places the streams; the driver polls it, writes each stream's records to ``<out>/<stream>/detections.jsonl``
(once each, in frame order, moves recorded), serves one /metrics for the cluster, and applies the sources file's
changes and the control endpoint's requests (serve/control.py) while it runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

from yolotune.io.stream_sinks import StreamSinks
from yolotune.io.stream_specs import SourceSpec
from yolotune.options import DetectorOptions
from yolotune.serve.metrics import StreamStats
from yolotune.serve.runtime import RunOptions
from yolotune.serve.summary import RunSummary, StreamSummary
from yolotune.scale.cluster import connected, plan_actors

# the RunOptions a stream actor's runtime takes from the command (its sinks, duration and metrics are the driver's)
ACTOR_OPTIONS = ("max_batch", "max_wait_ms", "queue_size", "open_timeout_s", "read_timeout_s", "max_retries",
                 "backoff_base_s", "backoff_cap_s", "pixel_format", "decoders", "decoder_processes", "runtime_cores",
                 "on_demand")
POLL_S = 0.25
START_WAIT_S = 120.0  # a run's duration counts from when its actors run their streams, or at the latest from here


class ClusterStreams:
    """serve/control.StreamControl over the controller actor: what the sources file and the endpoint drive."""

    def __init__(self, ray, controller):
        self.ray, self.controller = ray, controller

    def add_stream(self, spec: SourceSpec) -> str:
        return self.ray.get(self.controller.add_stream.remote(spec))

    def remove_stream(self, name: str) -> None:
        self.ray.get(self.controller.remove_stream.remote(name))

    def stream_list(self) -> list[dict]:
        return self.ray.get(self.controller.stream_list.remote())


@dataclasses.dataclass
class ClusterOptions:
    address: str = "local"  # local, auto or HOST:PORT (scale/cluster.connected)
    actors: int | None = None  # default: one per GPU, else one per node
    gpus_per_actor: float = 1.0
    num_cpus: int | None = None  # a local cluster's CPUs
    # what an actor's capacity is measured at (plan's figure): {"fps": 30, "resolution": (1280, 720)}, or given:
    # {"frames_per_s": 900}
    capacity: dict = dataclasses.field(default_factory=lambda: {"fps": 30.0, "resolution": (1280, 720)})
    dead_after_s: float = 5.0  # an actor silent this long is lost and its streams move


def run_on_ray(model: str, specs: list[SourceSpec], options: RunOptions, overrides: dict,
               cluster: ClusterOptions | None = None, stop: threading.Event | None = None,
               on_poll: Callable[[dict], None] | None = None,
               control: Callable[[ClusterStreams], Callable[[], None]] | None = None) -> RunSummary:
    """``specs`` over a Ray cluster until every stream ends (unless ``options.keep_running``), ``duration_s``
    passes, or ``stop`` is set. ``control(streams)`` starts what adds and removes streams meanwhile and returns its
    stop."""
    if [f for f in options.formats if f != "jsonl"]:
        raise ValueError("run --ray writes jsonl; annotated videos need the pixels where they are drawn: run those "
                         "without --ray")
    started = time.perf_counter()
    with stream_cluster(model, overrides, options, cluster or ClusterOptions(), options.metrics_port is not None) \
            as (ray, controller):
        warmup_s = time.perf_counter() - started
        return drive(ray, controller, specs, options, stop, on_poll, control=control, warmup_s=warmup_s)


@contextlib.contextmanager
def stream_cluster(model: str, overrides: dict, options: RunOptions, cluster: ClusterOptions,
                   want_metrics: bool = False) -> Iterator[tuple]:
    """(ray, controller) for the block: Ray connected, the controller's stream actors started and their capacity
    measured; every actor stopped after."""
    device = DetectorOptions().replace(**overrides).device  # checked here, before any actor starts
    run_opts = {k: getattr(options, k) for k in ACTOR_OPTIONS}
    with connected(cluster.address, cluster.num_cpus) as ray:
        from yolotune.scale.controller import StreamController

        n_actors, resources = plan_actors(ray, device, cluster.actors, cluster.gpus_per_actor)
        controller = ray.remote(StreamController).options(num_cpus=0, max_concurrency=8).remote(
            model, overrides, run_opts, n_actors, resources, cluster.capacity, dead_after_s=cluster.dead_after_s,
            keep_running=options.keep_running, prefix=f"yolotune-streams-{uuid.uuid4().hex[:8]}")
        try:
            ray.get(controller.start.remote(want_metrics))
            yield ray, controller
        finally:
            # a controller that is gone already: Ray ends its actors with the job
            with contextlib.suppress(ray.exceptions.RayError):
                ray.get(controller.stop.remote(), timeout=120)


def drive(ray, controller, specs: list[SourceSpec], options: RunOptions, stop: threading.Event | None = None,
          on_poll: Callable[[dict], None] | None = None, clip: tuple | None = None,
          control: Callable[[ClusterStreams], Callable[[], None]] | None = None, warmup_s: float = 0.0,
          keep_actors: bool = False) -> RunSummary:
    """Run ``specs`` on a started controller and write their records (``options.out``) until they end, the
    duration passes or ``stop`` is set. ``clip``: (width, height, fps) of a clip each actor generates for every
    stream (plan's verification). ``keep_actors``: end only the streams, and give each actor a new runtime, for
    another run on the same actors."""
    stop = stop or threading.Event()
    writer = _Writer(options.out)
    metrics = None
    stop_control = None
    try:
        ray.get(controller.add_streams.remote(list(specs), clip))
        if options.metrics_port is not None:
            from yolotune.scale.metrics import ClusterMetrics

            metrics = ClusterMetrics()
            metrics.serve(options.metrics_port, options.metrics_host)
        if control is not None:
            stop_control = control(ClusterStreams(ray, controller))
        began = time.perf_counter()
        t0 = None  # when every actor with streams runs them (their rings and graphs made): the duration counts from here
        stopped_by = None
        while True:
            update = ray.get(controller.poll.remote())
            writer.write(update["records"])
            if metrics is not None:
                metrics.update(update)
            if on_poll is not None:
                on_poll(update)
            now = time.perf_counter()
            if t0 is None and (all(a.get("running") for a in update["actors"] if a["streams"])
                               or now - began >= START_WAIT_S):
                t0 = now
            if update["finished"]:
                break
            if stop.is_set():
                stopped_by = getattr(stop, "reason", None) or "stop"
                break
            if options.duration_s is not None and t0 is not None and now - t0 >= options.duration_s:
                stopped_by = "duration"
                break
            stop.wait(POLL_S)
        ended = time.perf_counter()
        seconds = ended - (t0 or began)
        if stop_control is not None:
            stop_control()
            stop_control = None
        final = ray.get(controller.end_streams.remote(fresh=True) if keep_actors else controller.stop.remote())
        writer.write(final["records"])
    finally:
        if stop_control is not None:
            stop_control()
        if metrics is not None:
            metrics.close()
        outputs = writer.close()
    return _summary(final, writer, seconds, ended, stopped_by, outputs, options, warmup_s)


class _Writer:
    """Each stream's records into ``<out>/<stream>/detections.jsonl``, and its results' counts and latencies."""

    def __init__(self, out: Path | None):
        self.out = Path(out) if out is not None else None
        self.sinks: dict[str, StreamSinks] = {}
        self.stats: dict[str, StreamStats] = {}
        self.latencies_s: list[float] = []

    def write(self, records: list[tuple[str, dict]]) -> None:
        for name, row in records:
            if "frame" in row:
                st = self.stats.setdefault(name, StreamStats(name))
                st.record(row["latency_ms"] / 1e3, len(row.get("detections", ())))
                self.latencies_s.append(row["latency_ms"] / 1e3)
            if self.out is not None:
                if name not in self.sinks:
                    self.sinks[name] = StreamSinks(self.out, name, ("jsonl",))
                self.sinks[name].write_row(row)

    def close(self) -> list[str]:
        return [p for s in self.sinks.values() for p in s.close()]


def _summary(final: dict, writer: _Writer, seconds: float, ended: float, stopped_by: str | None,
             outputs: list[str], options: RunOptions, warmup_s: float) -> RunSummary:
    import numpy as np

    wall = max(seconds, 1e-9)
    streams = []
    for name, c in final["streams"].items():
        st = writer.stats.get(name) or StreamStats(name)
        fields = {f.name for f in dataclasses.fields(StreamSummary)}
        row = {k: v for k, v in c.items() if k in fields}
        row.setdefault("state", "starting")
        for k in ("received", "decoded", "dropped", "dropped_before_decode", "unprocessed_at_stop", "frames_lost",
                  "outages", "reconnects", "reconnect_attempts", "max_queue_depth"):
            row.setdefault(k, 0)
        row.update(processed=st.frames, detections=st.detections, fps=st.frames / wall,
                   steady_fps=st.steady_fps(ended), latency_p50_ms=st.percentile_ms(50),
                   latency_p99_ms=st.percentile_ms(99))
        row.setdefault("lag_s", 0.0)
        row.setdefault("max_lag_s", 0.0)
        row.setdefault("error", None)
        row.setdefault("last_error", None)
        streams.append(StreamSummary(**row))
    actors = final["actors"]
    frames = sum(s.processed for s in streams)
    batches = sum(a["batches"] for a in actors)
    lat = np.asarray(writer.latencies_s) * 1e3 if writer.latencies_s else None
    first = next((a for a in actors if a.get("decoders")), {})
    return RunSummary(
        streams=streams, seconds=round(wall, 2), frames=frames, batches=batches, fps=frames / wall,
        mean_batch=frames / batches if batches else 0.0,
        latency_p50_ms=float(np.percentile(lat, 50)) if lat is not None else None,
        latency_p99_ms=float(np.percentile(lat, 99)) if lat is not None else None,
        dropped=sum(s.dropped for s in streams), engine_errors=sum(a["engine_errors"] for a in actors),
        last_engine_error=next((a["last_engine_error"] for a in actors if a.get("last_engine_error")), None),
        sink_errors=0, failed=[s.name for s in streams if s.state in ("failed", "never-connected")],
        never_connected=[s.name for s in streams if s.state == "never-connected"],
        damaged=[s.name for s in streams if s.frames_lost], stopped_by=stopped_by, outputs=outputs,
        device=f"ray: {len(actors)} actors ({', '.join(sorted({a['device'] or '?' for a in actors}))})",
        metrics_port=options.metrics_port, host_rss_mib=None, pixel_format=first.get("pixel_format", ""),
        decoders=first.get("decoders", ""), warmup_s=round(warmup_s, 2), decoder_rings_mib=0.0,
        actors=actors, moves=final["moves"], capacities=final["capacities"])
