"""A stream actor: one Detector and one stream runtime on a Ray worker's device, streams added and removed by the
controller (scale/controller.py), their records held here until the controller drains them.

The runtime is ``run``'s own (serve/runtime.py), kept running with no stream (``keep_running``), each stream's
records going to memory instead of files (io/stream_sinks.RecordSink): the driver writes them, once each.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from pathlib import Path

from yolotune.io.stream_specs import SourceSpec

PLAN_CLIP = "yolotune-plan-clip"  # a spec's uri that stands for a generated clip made on the actor's own node


class StreamActor:
    def __init__(self, model: str, overrides: dict, run_options: dict):
        from yolotune.pipeline.detector import Detector
        from yolotune.serve.runtime import RunOptions, StreamRuntime

        self.detector = Detector(model, **overrides)  # an artifact's own options, with the caller's on top
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.started_at = time.time()
        self._records: list[tuple[str, dict]] = []
        self._lock = threading.Lock()
        self.options = RunOptions(out=None, keep_running=True, **run_options)
        self.runtime = StreamRuntime(self.detector, [], self.options, make_sink=self._sink)
        self._thread: threading.Thread | None = None
        self._clips: dict[tuple, str] = {}

    def _sink(self, spec: SourceSpec):
        from yolotune.io.stream_sinks import RecordSink

        def append(row: dict, name: str = spec.name) -> None:
            with self._lock:
                self._records.append((name, row))

        return RecordSink(spec.name, append)

    def ready(self) -> dict:
        """Who this actor is: its name (host:pid, new after a restart), device, GPU and node."""
        import ray
        import torch

        dev = self.detector.device
        return {"actor": self.name, "device": str(dev), "started_at": self.started_at,
                "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU",
                "node": ray.get_runtime_context().get_node_id(), "batch": self.detector.batch}

    def capacity(self, fps: float, resolution: tuple[int, int]) -> dict:
        """Plan's figure for this actor's device: how many streams of ``fps`` at ``resolution`` (width, height) fit,
        and what binds it (serve/plan.py, without its verification runs); before any stream is added."""
        from yolotune.serve.plan import plan

        report = plan(self.detector, fps, tuple(resolution), verify=False)
        return {"actor": self.name, "device": report.device, "streams": report.predicted_streams,
                "streams_exact": min(report.limits.values()), "frames_per_s": min(report.limits.values()) * fps,
                "binding": report.binding, "limits": report.limits, "batch": report.batch}

    def _clip(self, width: int, height: int, fps: float) -> str:
        """A clip generated on this node (plan's verification: no path needs to be shared between nodes)."""
        key = (width, height, fps)
        if key not in self._clips:
            from yolotune.serve.plan import plan_clip

            work = Path(tempfile.mkdtemp(prefix="yolotune-actor-clip-"))
            self._clips[key] = str(plan_clip(work, width, height, fps))
        return self._clips[key]

    def add_many(self, items: list[tuple[SourceSpec, tuple | None]]) -> list[str | None]:
        """Run each ``(spec, clip)`` here (``clip``: (width, height, fps) of a generated clip that replaces its
        uri); for each, None or why it could not start. The runtime starts after the first call's streams, so it
        prepares for them all (rings, graphs: StreamRuntime._prepare) before any clock runs."""
        errors: list[str | None] = []
        for spec, clip in items:
            try:
                if clip is not None:
                    spec.uri = self._clip(*clip)
                self.runtime.add_stream(spec)
                errors.append(None)
            except (ValueError, OSError) as e:
                errors.append(str(e))
        if self._thread is None:
            self._thread = threading.Thread(target=self.runtime.run, name="yolotune-stream-runtime", daemon=True)
            self._thread.start()
        return errors

    def remove(self, name: str) -> bool:
        try:
            self.runtime.remove_stream(name)
            return True
        except KeyError:
            return False

    def drain(self, metrics: bool = False) -> dict:
        """The records since the last drain, each stream's state and counts, and (``metrics``) the Prometheus text."""
        from yolotune.serve.summary import stream_counts

        rt = self.runtime
        with self._lock:
            records, self._records = self._records, []
        streams = {spec.name: {**stream_counts(spec, st, q, w.status, i in rt.table.removed), "fps": round(st.fps, 2)}
                   for i, spec, st, q, w in rt.table.rows()}
        # running: its streams' clocks run (the runtime made their rings and captured their graphs first)
        return {"actor": self.name, "records": records, "streams": streams, "batches": rt.batches,
                "running": rt.started > 0,
                "engine_errors": rt.engine_errors, "last_engine_error": rt.last_engine_error,
                "pixel_format": rt.pixel_format, "decoders": rt.decoders,
                "metrics": rt.metrics.text() if metrics else None}

    def stop(self) -> dict:
        """Stop every stream and the runtime; the last records."""
        self.runtime._request_stop("stopped")
        if self._thread is not None:
            self._thread.join(timeout=30)
        return self.drain()

    def fresh_runtime(self) -> dict:
        """Stop the runtime and start from a new one (no stream, no decoder process, no ring), the Detector and its
        graphs kept: each of plan's verification runs starts as plain plan's does. The last records."""
        from yolotune.serve.runtime import StreamRuntime

        last = self.stop()
        self.runtime = StreamRuntime(self.detector, [], self.options, make_sink=self._sink)
        self._thread = None
        return last
