"""Per-stream counters of a run: exact summaries for the report, and Prometheus metrics for /metrics."""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field

import numpy as np

# up to a minute: an overloaded or lossless real-time run can fall that far behind, and it must show
LATENCY_BUCKETS_S = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0)
RATE_WINDOW_S = 5.0  # a stream's FPS is over the last 5 s: batches minutes apart on a CPU still read as a rate


@dataclass
class StreamStats:
    name: str
    frames: int = 0
    detections: int = 0
    latencies_s: collections.deque = field(default_factory=lambda: collections.deque(maxlen=100_000))
    fps: float = 0.0  # over the last RATE_WINDOW_S (or since the first result, when that is sooner)
    _samples: collections.deque = field(default_factory=collections.deque)  # (time, frames) at each update

    first_at: float | None = None  # when its first result came (start-up excluded from its steady rate)

    def record(self, latency_s: float, detections: int) -> None:
        if self.first_at is None:
            self.first_at = time.perf_counter()
        self.frames += 1
        self.detections += detections
        self.latencies_s.append(latency_s)

    def update_rate(self, now: float) -> None:
        """Frames per second over the last RATE_WINDOW_S. A window as short as the refresh (0.5 s) read 0.0 most
        of the time wherever batches take longer than that (a CPU with many streams)."""
        if self.first_at is None:
            return
        samples = self._samples
        if not samples:
            samples.append((self.first_at, 0))
        samples.append((now, self.frames))
        while len(samples) > 2 and samples[1][0] <= now - RATE_WINDOW_S:
            samples.popleft()
        t0, n0 = samples[0]
        if now > t0:
            self.fps = (self.frames - n0) / (now - t0)

    def steady_fps(self, now: float) -> float:
        """Frames/s since its first result: a stream's rate once its decoder and the engine are up."""
        return self.frames / (now - self.first_at) if self.first_at is not None and now > self.first_at else 0.0

    def percentile_ms(self, q: float) -> float | None:
        return float(np.percentile(np.fromiter(self.latencies_s, float), q) * 1e3) if self.latencies_s else None


class PrometheusMetrics:
    """yolotune_* metrics in a registry of their own, served by prometheus-client's HTTP server when asked."""

    def __init__(self, names: list[str]):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        self.frames = Counter("yolotune_frames", "Frames processed", ["stream"], registry=r)
        self.dropped = Counter("yolotune_frames_dropped", "Frames dropped because the pipeline was behind (camera-like "
                               "sources: before decoding, or from the queue)", ["stream"], registry=r)
        self.reconnects = Counter("yolotune_reconnects", "Outages a source came back from", ["stream"], registry=r)
        self.outages = Counter("yolotune_stream_outages", "Times a delivering source lost its stream", ["stream"], registry=r)
        self.attempts = Counter("yolotune_reconnect_attempts", "Times a source tried to reopen", ["stream"], registry=r)
        self.lag = Gauge("yolotune_stream_lag_seconds", "How late the stream's last frame was delivered: behind a "
                         "real-time file's clock, or since a live frame arrived", ["stream"], registry=r)
        self.latency = Histogram("yolotune_frame_latency_seconds", "Decode end to result", ["stream"],
                                 buckets=LATENCY_BUCKETS_S, registry=r)
        self.queue_depth = Gauge("yolotune_queue_depth", "Frames waiting in the stream's queue", ["stream"], registry=r)
        self.fps = Gauge("yolotune_stream_fps", "Frames per second over the last second", ["stream"], registry=r)
        self.up = Gauge("yolotune_stream_up", "1 while the source delivers frames", ["stream"], registry=r)
        self.batch = Histogram("yolotune_batch_size", "Frames per batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.gpu_util = Gauge("yolotune_gpu_utilization_percent", "GPU utilisation (NVML)", registry=r)
        self._names = list(names)
        self._seen = {k: [0] * len(names) for k in ("dropped", "reconnects", "outages", "attempts")}
        self.port: int | None = None
        self._server = None

    def add(self, i: int, name: str) -> None:
        """Stream ``i`` (new, or back under its number): its source's counts start again from 0."""
        if i == len(self._names):
            self._names.append(name)
            for seen in self._seen.values():
                seen.append(0)
        for seen in self._seen.values():
            seen[i] = 0

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """/metrics on ``addr``:``port``; loopback unless asked, so a camera wall's numbers stay on this machine."""
        self._server, self.port = serve_registry(self.registry, port, addr), port

    def close(self) -> None:
        close_server(self._server)
        self._server = None

    def observe(self, stream: int, latency_s: float) -> None:
        name = self._names[stream]
        self.frames.labels(name).inc()
        self.latency.labels(name).observe(latency_s)

    def refresh(self, i: int, depth: int, dropped: int, status, fps: float) -> None:
        """Stream ``i`` now: queue depth, frames dropped in all, its source's status (io/streams.SourceStatus)."""
        name = self._names[i]
        self.queue_depth.labels(name).set(depth)
        self.fps.labels(name).set(fps)
        self.up.labels(name).set(1 if status.state == "running" else 0)
        self.lag.labels(name).set(status.lag_s)
        for key, now in (("dropped", dropped), ("reconnects", status.reconnects), ("outages", status.outages),
                         ("attempts", status.attempts)):
            seen = self._seen[key]
            if now > seen[i]:
                getattr(self, key).labels(name).inc(now - seen[i])
                seen[i] = now

    def text(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()


def serve_registry(registry, port: int, addr: str):
    """prometheus-client's HTTP server for ``registry`` (its server object, where this version returns one)."""
    from prometheus_client import start_http_server

    started = start_http_server(port, addr=addr, registry=registry)
    return started[0] if isinstance(started, tuple) else None


def close_server(server) -> None:
    if server is not None:
        server.shutdown()
        server.server_close()


def resident_bytes() -> int:
    """Resident memory of this process but its shared-memory mappings (the decoder processes' rings: fixed in size,
    and resident here only once read, which would look like growth)."""
    import psutil

    rss = psutil.Process().memory_info().rss
    try:
        with open("/proc/self/status") as f:
            shmem = next((int(line.split()[1]) * 1024 for line in f if line.startswith("RssShmem:")), 0)
    except OSError:
        shmem = 0
    return rss - shmem


class _NoSampler:
    series = None

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return None


def gpu_sampler(device):
    """NVML utilisation sampled every half second while the block runs (nothing on a CPU)."""
    if getattr(device, "type", "cpu") != "cuda":
        return _NoSampler()
    from yolotune.profile.counters import NvmlSampler

    return NvmlSampler(device, interval_s=0.5)
