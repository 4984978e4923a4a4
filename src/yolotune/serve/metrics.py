"""Per-stream counters of a run: exact summaries for the report, and Prometheus metrics for /metrics."""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field

import numpy as np

LATENCY_BUCKETS_S = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


@dataclass
class StreamStats:
    name: str
    frames: int = 0
    detections: int = 0
    latencies_s: collections.deque = field(default_factory=lambda: collections.deque(maxlen=100_000))
    fps: float = 0.0  # over the last update window
    _window_frames: int = 0
    _window_start: float = field(default_factory=time.perf_counter)

    first_at: float | None = None  # when its first result came (start-up excluded from its steady rate)

    def record(self, latency_s: float, detections: int) -> None:
        if self.first_at is None:
            self.first_at = time.perf_counter()
        self.frames += 1
        self.detections += detections
        self.latencies_s.append(latency_s)

    def update_rate(self, now: float) -> None:
        dt = now - self._window_start
        if dt > 0:
            self.fps = (self.frames - self._window_frames) / dt
            self._window_frames, self._window_start = self.frames, now

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
        self.dropped = Counter("yolotune_frames_dropped", "Frames dropped because the pipeline was behind (live sources)", ["stream"], registry=r)
        self.reconnects = Counter("yolotune_reconnects", "Times a source was reopened after an error", ["stream"], registry=r)
        self.latency = Histogram("yolotune_frame_latency_seconds", "Decode end to result", ["stream"],
                                 buckets=LATENCY_BUCKETS_S, registry=r)
        self.queue_depth = Gauge("yolotune_queue_depth", "Frames waiting in the stream's queue", ["stream"], registry=r)
        self.fps = Gauge("yolotune_stream_fps", "Frames per second over the last second", ["stream"], registry=r)
        self.up = Gauge("yolotune_stream_up", "1 while the source delivers frames", ["stream"], registry=r)
        self.batch = Histogram("yolotune_batch_size", "Frames per batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.gpu_util = Gauge("yolotune_gpu_utilization_percent", "GPU utilisation (NVML)", registry=r)
        self._names = names
        self._seen_drops = [0] * len(names)
        self._seen_reconnects = [0] * len(names)
        self.port: int | None = None
        self._server = None

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """/metrics on ``addr``:``port``; loopback unless asked, so a camera wall's numbers stay on this machine."""
        from prometheus_client import start_http_server

        started = start_http_server(port, addr=addr, registry=self.registry)
        self._server = started[0] if isinstance(started, tuple) else None
        self.port = port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def observe(self, stream: int, latency_s: float) -> None:
        name = self._names[stream]
        self.frames.labels(name).inc()
        self.latency.labels(name).observe(latency_s)

    def refresh(self, i: int, depth: int, dropped: int, reconnects: int, fps: float, up: bool) -> None:
        name = self._names[i]
        self.queue_depth.labels(name).set(depth)
        self.fps.labels(name).set(fps)
        self.up.labels(name).set(1 if up else 0)
        if dropped > self._seen_drops[i]:
            self.dropped.labels(name).inc(dropped - self._seen_drops[i])
            self._seen_drops[i] = dropped
        if reconnects > self._seen_reconnects[i]:
            self.reconnects.labels(name).inc(reconnects - self._seen_reconnects[i])
            self._seen_reconnects[i] = reconnects

    def text(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()
