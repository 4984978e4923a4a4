"""RunSummary: what ``yolotune run`` did, per stream and in all; ``to_dict`` is ``run --json``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np


@dataclass
class StreamSummary:
    """One stream's row: what came in, what was processed, dropped (before decoding, or from the queue), lost to
    damage, and its connection's history."""

    name: str
    source: str
    kind: str
    state: str  # io/streams.SOURCE_STATES, or "removed" (while the run went on)
    received: int  # packets the source sent
    decoded: int  # frames delivered into its queue
    processed: int  # frames with results
    dropped: int  # before decoding, or from the queue (camera-like sources past capacity)
    dropped_before_decode: int
    unprocessed_at_stop: int
    frames_lost: int  # to damage or truncation
    outages: int
    reconnects: int
    reconnect_attempts: int
    detections: int
    fps: float
    steady_fps: float  # since its first result: start-up excluded
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    max_queue_depth: int
    lag_s: float
    max_lag_s: float
    error: str | None
    last_error: str | None
    actor: str | None = None  # run --ray: the actor it runs on now
    moves: int = 0  # run --ray: times it moved to another actor (each also counted as an outage and a reconnect)
    decoder: str = ""  # where its video was decoded last: "nvdec" (the GPU's engines) or "cpu"


@dataclass
class RunSummary:
    streams: list[StreamSummary]
    seconds: float
    frames: int
    batches: int
    fps: float
    mean_batch: float
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    dropped: int
    engine_errors: int
    last_engine_error: str | None
    sink_errors: int
    failed: list[str]  # streams that failed or never connected (the exit code reports them)
    never_connected: list[str]
    damaged: list[str]  # streams with frames lost to damage
    stopped_by: str | None  # "duration", a signal's name, or None when every source ended
    outputs: list[str]
    device: str
    metrics_port: int | None
    host_rss_mib: dict | None  # start, after warm-up, end, max, growth after warm-up
    pixel_format: str
    decoders: str
    warmup_s: float
    decoder_rings_mib: float
    engine_thread_s: dict[str, float] = field(default_factory=dict)  # where the engine thread's time went
    latency_parts_ms: dict[str, dict] = field(default_factory=dict)  # handover / queued / engine: p50 and p99
    actors: list[dict] = field(default_factory=list)  # run --ray: each stream actor, its device, capacity and load
    moves: int = 0  # run --ray: streams moved to another actor
    capacities: dict = field(default_factory=dict)  # run --ray: plan's figure per GPU type
    # streams decoded on NVDEC and on the CPU, NVDEC's stream limit, its decoder processes and their device rings
    video_decode: dict = field(default_factory=dict)

    @property
    def any_failed(self) -> bool:
        """What makes ``run`` exit 1: a stream failed or lost frames, or results were lost to the engine or sinks."""
        return bool(self.failed or self.damaged or self.engine_errors or self.sink_errors)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def summarize(rt, now: float) -> RunSummary:
    """The summary of StreamRuntime ``rt`` at ``now`` (perf_counter)."""
    wall = max(now - rt.started, 1e-9)
    stopped_at = getattr(rt, "stopped_at", now)
    streams = [_stream(spec, st, q, w.status, wall, stopped_at, removed=i in rt.table.removed)
               for i, spec, st, q, w in rt.table.rows()]
    processed = sum(s.processed for s in streams)
    all_lat = [x for st in rt.stats for x in st.latencies_s]
    lat = np.asarray(all_lat) * 1e3 if all_lat else None
    return RunSummary(
        streams=streams, seconds=round(wall, 2), frames=processed, batches=rt.batches, fps=processed / wall,
        mean_batch=processed / rt.batches if rt.batches else 0.0,
        latency_p50_ms=float(np.percentile(lat, 50)) if lat is not None else None,
        latency_p99_ms=float(np.percentile(lat, 99)) if lat is not None else None,
        dropped=sum(s.dropped for s in streams), engine_errors=rt.engine_errors,
        last_engine_error=rt.last_engine_error, sink_errors=rt.sink_errors,
        failed=[s.name for s in streams if s.state in ("failed", "never-connected")],
        never_connected=[s.name for s in streams if s.state == "never-connected"],
        damaged=[s.name for s in streams if s.frames_lost],
        stopped_by=rt.interrupted, outputs=list(getattr(rt, "outputs", [])), device=str(rt.detector.device),
        metrics_port=rt.metrics.port, host_rss_mib=_rss(rt.rss), pixel_format=rt.pixel_format, decoders=rt.decoders,
        warmup_s=round(getattr(rt, "warmup_s", 0.0), 2),
        decoder_rings_mib=round(rt.pool.mapped_bytes / 2**20, 1) if rt.pool else 0.0,
        engine_thread_s={k: round(v, 3) for k, v in rt.loop_seconds.items()},
        latency_parts_ms={part: {"p50": round(float(np.percentile(v, 50)) * 1e3, 2),
                                 "p99": round(float(np.percentile(v, 99)) * 1e3, 2)}
                          for part, v in rt.latency_parts.items() if v},
        video_decode=_video_decode(rt, streams))


def _video_decode(rt, streams: list[StreamSummary]) -> dict:
    router = getattr(rt, "router", None)
    pool = getattr(rt, "pool", None)
    return {"nvdec_streams": sum(s.decoder == "nvdec" for s in streams),
            "cpu_streams": sum(s.decoder == "cpu" for s in streams),
            "nvdec_limit": router.limit if router is not None and router.factory is not None else None,
            "nvdec_processes": len(pool.nvdec_procs) if pool is not None else 0,
            "device_rings_mib": round(pool.device_ring_bytes / 2**20, 1) if pool is not None else 0.0}


def stream_counts(spec, st, q, status, removed: bool = False) -> dict:
    """A stream's state and counts now (no latency percentiles: cheap enough to send every fraction of a second)."""
    return dict(
        name=spec.name, source=spec.uri, kind=spec.kind, state="removed" if removed else status.state,
        received=status.received, decoded=status.frames, processed=st.frames, dropped=q.dropped + status.dropped,
        dropped_before_decode=status.dropped, unprocessed_at_stop=len(q), frames_lost=status.frames_lost,
        outages=status.outages, reconnects=status.reconnects, reconnect_attempts=status.attempts,
        detections=st.detections, max_queue_depth=q.max_depth, lag_s=round(status.lag_s, 3),
        max_lag_s=round(status.max_lag_s, 3), error=status.error, last_error=status.last_error,
        decoder=getattr(status, "decoder", ""))


def _stream(spec, st, q, status, wall: float, stopped_at: float, removed: bool = False) -> StreamSummary:
    return StreamSummary(**stream_counts(spec, st, q, status, removed), fps=st.frames / wall,
                         steady_fps=st.steady_fps(stopped_at), latency_p50_ms=st.percentile_ms(50),
                         latency_p99_ms=st.percentile_ms(99))


def _rss(samples: list[tuple[float, int]]) -> dict | None:
    """Host memory over the run: after the first quarter (warm-up done) vs the end, to see growth."""
    if len(samples) < 2:
        return None
    t0, t1 = samples[0][0], samples[-1][0]
    warm = next(r for t, r in samples if t >= t0 + (t1 - t0) / 4)
    mib = lambda b: round(b / 2**20, 1)  # noqa: E731
    return {"start": mib(samples[0][1]), "after_warmup": mib(warm), "end": mib(samples[-1][1]),
            "max": mib(max(r for _, r in samples)), "growth_after_warmup": mib(samples[-1][1] - warm)}
