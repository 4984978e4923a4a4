"""``yolotune run``: many sources through one Detector, batched across streams, results routed back per stream.

    sources (a thread each) -> bounded queues -> BatchScheduler -> Detector.submit_frames / collect -> sink thread
    -> per-stream sinks

Frames of a stream leave its queue in order and batches are processed one after another, so each stream's
results come out in frame order. Latency is measured from the end of a frame's decode to its result. A monitor
thread refreshes rates, queue depths and GPU utilisation for Prometheus and the terminal dashboard.
"""

from __future__ import annotations

import collections
import queue
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from yolotune.interpreter import startup_objects_frozen, usable_cores
from yolotune.io.nvdec import video_decoder_for
from yolotune.io.stream_sinks import StreamSinks
from yolotune.io.stream_specs import SourceSpec, name_streams, picture_size, source_fps
from yolotune.io.streams import decoder_threads
from yolotune.serve.choices import decoder_mode, pixel_format_for, ring_pinner
from yolotune.serve.decode_routing import DecodeRouter
from yolotune.serve.decoders import DecoderOptions, DecoderPool, decoder_cpus, decoder_processes, frame_nbytes
from yolotune.serve.metrics import PrometheusMetrics, gpu_sampler, resident_bytes
from yolotune.serve.queues import Backlog
from yolotune.serve.scheduler import BatchScheduler
from yolotune.serve.stream_table import StreamTable
from yolotune.serve.summary import RunSummary, summarize


@dataclass
class RunOptions:
    out: Path | None = Path("yolotune-run")  # None: no files (planning, tests)
    formats: tuple[str, ...] = ("jsonl",)
    max_batch: int = 16
    max_wait_ms: float = 10.0
    queue_size: int = 8  # frames per stream
    duration_s: float | None = None  # stop after this long (live sources never end by themselves)
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"  # where /metrics listens: this machine only, unless asked (0.0.0.0: everywhere)
    open_timeout_s: float = 10.0
    read_timeout_s: float = 10.0
    max_retries: int | None = None  # live sources: None retries for the whole run
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    pixel_format: str = "auto"  # rgb24, yuv420p (converted on the device), auto: yuv420p on a GPU
    decoders: str = "auto"  # threads, processes (serve/decoders.py), auto: processes on a GPU with 8+ cores
    decoder_processes: int | None = None  # None: one per core but two, at most one per source
    decoder_nice: int = 5  # niceness added to decoder processes: the engine thread comes first (serve/decoders.py)
    # Cores kept free of decoder processes for this process's threads (decoders.decoder_cpus; 0: decoders use every
    # core): the p99 halves with 2 kept (benchmarks/results/serve/serve_stalls_h100_cores_ab.json)
    runtime_cores: int = 2
    # camera-like sources decode only what their queue has room for (io/video.py); False decodes every frame and
    # drops it from the queue (the A/B of benchmarks/live_overload.py)
    on_demand: bool = True
    # run until stopped (duration, a signal, stop()), also with no stream left: streams may be added (add_stream)
    keep_running: bool = False
    # video decoding: "nvdec" on the GPU's NVDEC engines into device memory (serve/decode_routing.py), "cpu" with
    # FFmpeg, "auto" NVDEC where the detector's device has it; streams past NVDEC's limit are decoded on the CPU
    video_decode: str = "auto"
    # streams NVDEC takes at most (plan's figure: the rest are decoded on the CPU); None: every one it can take
    nvdec_streams: int | None = None
    nvdec_processes: int | None = None  # decoder processes for NVDEC's streams; None: nvdec_processes()
    # the GIL switch interval of decoder processes (ms; None: Python's 5 ms): their source threads hand the GIL
    # back and forth around every frame's short waits (serve/decoder_process.py)
    decoder_switch_ms: float | None = 0.5


# a result's latency (decode end -> result) in parts: handing the frame over (a decoder process's pipe), waiting in
# its queue for a batch, and the engine (upload, model, NMS, copy back, waiting for the batch ahead)
LATENCY_PARTS = ("handover", "queued", "engine")


def nvdec_processes(streams: int, cores: int) -> int:
    """Decoder processes for ``streams`` NVDEC streams: a third of the cores (the rest decode on the CPU), at most
    one per stream."""
    return max(1, min(streams, cores // 3))


def _gpu_index(device) -> int | None:
    if getattr(device, "type", "cpu") != "cuda":
        return None
    import torch

    return device.index if device.index is not None else torch.cuda.current_device()


class StreamRuntime:
    """``specs`` to start with; ``add_stream`` and ``remove_stream`` change them while it runs. ``make_sink(spec)``:
    where a stream's results go (default: StreamSinks under ``options.out``; None writes nothing)."""

    def __init__(self, detector, specs: list[SourceSpec], options: RunOptions | None = None,
                 make_sink: Callable[[SourceSpec], object | None] | None = None):
        self.opt = options or RunOptions()
        if not specs and not self.opt.keep_running:
            raise ValueError("no sources given")
        self.detector = detector
        specs = name_streams(list(specs))
        self.pixel_format = pixel_format_for(self.opt.pixel_format, detector)
        self.stop = threading.Event()
        self.backlog = Backlog()
        self.wake = self.backlog.wake
        # streams may be added: decode as for many (decoder processes, one FFmpeg thread each)
        cores = usable_cores()
        expected = self.expected_streams = max(len(specs), cores) if self.opt.keep_running else len(specs)
        self.router = self._decode_router()
        # the streams NVDEC decodes and those the CPU does (decoder processes where there are several streams)
        on_nvdec = min(expected, self.router.limit if self.router.limit is not None else expected)
        on_nvdec = on_nvdec if self.router.enabled else 0
        on_cpu = expected if self.opt.keep_running else expected - on_nvdec  # streams may come past NVDEC's limit
        self.decoders = decoder_mode(self.opt.decoders, detector, expected)
        # In processes, a stream's frames wait in ring slots (4 x queue_size): a live stream's queue here (queue_size)
        # plus two batches in flight, whose slots the device reads until they are collected, always fit, so a live
        # decoder never waits; a file stream's queue holds every slot, so handing a frame over never blocks, and its
        # decoder process waits for a free slot instead (StreamTable.capacity).
        slots = 4 * self.opt.queue_size
        self.metrics = PrometheusMetrics([])
        self.table = StreamTable(self, make_sink or self._file_sinks)
        self._events: queue.Queue = queue.Queue()
        self.pool: DecoderPool | None = None
        if self.decoders == "processes":
            # NVDEC's streams in processes of their own, one GIL each: in one process NVDEC's host side is bound by
            # the GIL (benchmarks/results/serve/nvdec_sessions_h100.json); the CPU's streams in the others
            nvdec_procs = (self.opt.nvdec_processes or nvdec_processes(on_nvdec, cores)) if on_nvdec else 0
            processes = self.opt.decoder_processes or (decoder_processes(on_cpu) if on_cpu else 0)
            self.pool = DecoderPool([], self.table.queues, self.stop, DecoderOptions(
                self.opt.open_timeout_s, self.opt.read_timeout_s, self.opt.max_retries, self.opt.backoff_base_s,
                self.opt.backoff_cap_s, self.pixel_format, slots, decoder_threads(max(1, on_cpu)),
                self.opt.decoder_nice, decoder_cpus(self.opt.runtime_cores), self.opt.queue_size, self.opt.on_demand,
                self.opt.keep_running, device_slots=max(4, 2 * self.opt.queue_size),
                switch_interval_s=self.opt.decoder_switch_ms / 1e3 if self.opt.decoder_switch_ms else None),
                self._on_event, processes,
                pin=ring_pinner(detector), nvdec_processes=nvdec_procs, nvdec_device=_gpu_index(detector.device))
        for spec in specs:
            self.table.add(spec)
        max_batch = min(self.opt.max_batch, getattr(detector, "batch", self.opt.max_batch))
        self.scheduler = BatchScheduler(self.table.queues, self.backlog, max_batch, self.opt.max_wait_ms / 1e3,
                                        until_stopped=self.opt.keep_running)
        self.batches = 0
        self.engine_errors = 0  # frames lost to engine failures
        self.last_engine_error: str | None = None
        self.engine_failures_in_a_row = 0
        # where the engine thread's time goes (seconds): the first place to look when a run falls behind
        self.loop_seconds = {"waiting for frames": 0.0, "submitting": 0.0, "collecting and delivering": 0.0}
        # each result's latency in its three parts (seconds): a slow p99 says which part to look at
        self.latency_parts = {part: collections.deque(maxlen=200_000) for part in LATENCY_PARTS}
        self.sink_errors = 0  # results that could not be written
        self.rss: list[tuple[float, int]] = []  # (time, host resident bytes), sampled by the monitor
        self.interrupted: str | None = None
        self.started = 0.0

    def _decode_router(self) -> DecodeRouter:
        """Which streams NVDEC decodes: every video stream it can take, up to ``nvdec_streams`` (plan's figure)."""
        device = self.detector.device if getattr(self.detector, "preprocess", "cpu") == "gpu" else None
        return DecodeRouter(video_decoder_for(self.opt.video_decode, device), self.opt.nvdec_streams)

    def _file_sinks(self, spec: SourceSpec):
        return StreamSinks(self.opt.out, spec.name, self.opt.formats, fps=source_fps(spec)) if self.opt.out else None

    # the streams by number (StreamTable)
    specs = property(lambda self: self.table.specs)
    queues = property(lambda self: self.table.queues)
    stats = property(lambda self: self.table.stats)
    sinks = property(lambda self: self.table.sinks)
    workers = property(lambda self: self.table.workers)

    def add_stream(self, spec: SourceSpec) -> str:
        """Run ``spec`` too, also while running (with ``keep_running``, after every other stream ended); returns its
        name. ValueError for a name that runs already."""
        return self.specs[self.table.add(spec)].name

    def remove_stream(self, name: str) -> None:
        """Stop stream ``name`` while running; what it decoded is still processed. KeyError if none runs."""
        self.table.remove(name)

    def stream_list(self) -> list[dict]:
        """Every stream now: name, source, state, frames processed, frames/s."""
        return [{"name": spec.name, "source": spec.uri, "kind": spec.kind,
                 "state": "removed" if i in self.table.removed else w.status.state, "processed": st.frames,
                 "fps": round(st.fps, 2)} for i, spec, st, _, w in self.table.rows()]

    def _on_event(self, i: int, state: str, message: str, when: float | None = None, _snapshot=None) -> None:
        """A source event, stamped when it happened (``when``, wall clock) and written within a fraction of a
        second by the sink thread, batches or not."""
        self._events.put((i, state, message, when or time.time()))

    # ------------------------------------------------------------------------------------------------ run
    def run(self, on_tick: Callable[["StreamRuntime"], None] | None = None) -> RunSummary:
        """Run until every source is done, ``duration_s`` passes, or SIGINT/SIGTERM; flush sinks; the summary."""
        restore = self._install_signal_handlers()
        if self.opt.metrics_port is not None:
            self.metrics.serve(self.opt.metrics_port, self.opt.metrics_host)
        self.warmup_s = self._prepare()
        with startup_objects_frozen():  # a full collection would hold the GIL while frames wait
            self._run_started(on_tick, restore)
        return self.summary()

    def _run_started(self, on_tick, restore: Callable[[], None]) -> None:
        """The run itself, once prepared: threads up, the engine loop, then everything stopped and flushed."""
        self.started = time.perf_counter()
        results: queue.Queue = queue.Queue(maxsize=4)  # batches awaiting their sink writes: bounded memory
        sink_thread = threading.Thread(target=self._sink_loop, args=(results,), name="yolotune-sinks", daemon=True)
        monitor = threading.Thread(target=self._monitor_loop, args=(on_tick,), name="yolotune-monitor", daemon=True)
        sink_thread.start()
        monitor.start()
        self.table.start()
        timer = threading.Timer(self.opt.duration_s, self._request_stop, args=("duration",)) if self.opt.duration_s else None
        if timer:
            timer.daemon = True
            timer.start()
        try:
            self._engine_loop(results)
        finally:
            self.stopped_at = time.perf_counter()  # the end of each stream's steady rate (not the shutdown after)
            self.stop.set()
            self.table.stop_all()
            if timer:
                timer.cancel()
            with self.wake:
                self.wake.notify_all()
            for _, _, _, _, w in self.table.rows():  # stopped first, so their last events reach the sinks before those close
                w.join(timeout=max(self.opt.open_timeout_s, self.opt.read_timeout_s) + 2)
            results.put(None)
            sink_thread.join()
            monitor.join(timeout=2)
            restore()

    def _prepare(self) -> float:
        """Before any clock starts, for the file sources (whose picture size the header tells): their decoder rings
        made and page-locked, and the engine's graphs captured for their sizes (at most 4; other sizes, and live
        sources, are handled as they come). Returns the seconds it took."""
        t0 = time.perf_counter()
        sizes = {i: hw for i, spec in enumerate(self.specs) if spec.kind == "file" and (hw := picture_size(spec))}
        if self.pool is not None:
            self.pool.make_rings({i: frame_nbytes(hw, self.pixel_format) for i, hw in sizes.items()})
        prepare = getattr(self.detector, "prepare_frames", None)
        if prepare is None or self.detector.device.type != "cuda":
            return time.perf_counter() - t0
        layouts = {}  # (size, layout) the streams' frames come in: NVDEC's NV12, or the CPU decoders' format
        for i, (h, w) in sizes.items():
            i420 = self.pixel_format == "yuv420p" and h % 2 == 0 and w % 2 == 0
            layouts[(h, w), "nv12" if i in self.router.on_nvdec else "i420" if i420 else "rgb"] = None
        for hw, layout in list(layouts)[:4]:
            prepare(hw, layout)
        return time.perf_counter() - t0

    def _engine_loop(self, results: queue.Queue) -> None:
        """Two batches in flight: batch i+1 is gathered, uploaded and letterboxed while batch i computes; then i's
        results are collected. On a CPU (where submitting computes the batch at once, so overlap would only delay
        results) and for engines without ``submit_frames``, one batch at a time."""
        overlap = hasattr(self.detector, "submit_frames") and self.detector.device.type == "cuda"
        pending = None
        k = 0
        with gpu_sampler(self.detector.device) as nvml:
            self._nvml = nvml
            clock = self.loop_seconds
            while True:
                # with a batch in flight, do not sit waiting for frames: collect it first if no batch is due
                t0 = time.perf_counter()
                frames = self.scheduler.next_batch(self.stop, block=pending is None)
                t1 = time.perf_counter()
                clock["waiting for frames"] += t1 - t0
                if frames is None:
                    break
                if not frames:
                    self._finish(pending, results)
                    clock["collecting and delivering"] += time.perf_counter() - t1
                    pending = None
                    continue
                try:
                    if overlap:
                        # the frames' slots stay ours until collected: the device may read them in place
                        submitted = (frames, self.detector.submit_frames([f.image for f in frames], k % 2))
                        k += 1
                    else:
                        try:
                            dets = self.detector.detect([f.image for f in frames])
                        finally:
                            self._release(frames)
                        t2 = time.perf_counter()
                        clock["submitting"] += t2 - t1
                        self._deliver(frames, dets, results)
                        clock["collecting and delivering"] += time.perf_counter() - t2
                        continue
                except Exception as e:  # noqa: BLE001  (reported per stream; the run goes on unless it keeps failing)
                    self._release(frames)
                    self._engine_failed(frames, e)
                    continue
                t2 = time.perf_counter()
                clock["submitting"] += t2 - t1
                if pending is not None:
                    self._finish(pending, results)
                    clock["collecting and delivering"] += time.perf_counter() - t2
                pending = submitted
            if pending is not None:
                self._finish(pending, results)

    def _release(self, frames) -> None:
        if self.pool is not None:
            self.pool.release(frames)

    def _finish(self, pending, results: queue.Queue) -> None:
        frames, batch = pending
        try:
            dets = self.detector.collect(batch)
        except Exception as e:  # noqa: BLE001
            self._engine_failed(frames, e)
            return
        finally:
            self._release(frames)
        self._deliver(frames, dets, results)

    def _deliver(self, frames, dets, results: queue.Queue) -> None:
        self.engine_failures_in_a_row = 0
        now = time.perf_counter()
        self.batches += 1
        self.metrics.batch.observe(len(frames))
        hand, queued, engine = self.latency_parts.values()
        for f, d in zip(frames, dets):
            lat = now - f.decoded_at
            if f.queued_at and f.batched_at:
                hand.append(f.queued_at - f.decoded_at)
                queued.append(f.batched_at - f.queued_at)
                engine.append(now - f.batched_at)
            self.stats[f.stream].record(lat, len(d))
            self.metrics.observe(f.stream, lat)
        results.put(list(zip(frames, dets, [now - f.decoded_at for f in frames])))

    def _engine_failed(self, batch, error: Exception) -> None:
        """A batch the engine could not run: an error event for each stream in it; three in a row stop the run."""
        import torch

        if isinstance(error, torch.OutOfMemoryError):
            torch.cuda.empty_cache()
        self.engine_errors += len(batch)
        self.engine_failures_in_a_row += 1
        message = f"engine: {type(error).__name__}: {str(error)[:300]} ({len(batch)} frames lost)"
        self.last_engine_error = message
        for stream in sorted({f.stream for f in batch}):
            self._on_event(stream, "engine-error", message)
        if self.engine_failures_in_a_row >= 3:
            self._request_stop(f"engine failed 3 batches in a row: {type(error).__name__}")

    def _sink_loop(self, results: queue.Queue) -> None:
        while True:
            try:
                item = results.get(timeout=0.2)
            except queue.Empty:  # no batch: events (a source going down, say) are written all the same
                self._drain_events()
                continue
            if item is None:
                break
            self._drain_events()
            for frame, det, lat in item:
                sink = self.sinks[frame.stream]
                if sink is None:
                    continue
                try:
                    sink.write(frame, det, lat)
                except Exception as e:  # noqa: BLE001  (a full disk or a broken encoder must not stop the run)
                    self.sink_errors += 1
                    if self.sink_errors <= 10:
                        self._on_event(frame.stream, "sink-error", f"{type(e).__name__}: {e}")
        self._drain_events()
        self.outputs = [p for s in self.sinks if s is not None for p in s.close()]

    def _drain_events(self) -> None:
        while True:
            try:
                i, state, message, when = self._events.get_nowait()
            except queue.Empty:
                return
            sink = self.sinks[i]
            if sink is not None:
                sink.event(state, message, when)

    def _monitor_loop(self, on_tick) -> None:
        while not self.stop.wait(0.5):
            self.refresh()
            if on_tick is not None:
                on_tick(self)
        self.refresh()

    def refresh(self) -> None:
        now = time.perf_counter()
        self.rss.append((now, resident_bytes()))
        for i, _, st, q, w in self.table.rows():
            st.update_rate(now)
            self.metrics.refresh(i, len(q), q.dropped + w.status.dropped, w.status, st.fps)
        nvml = getattr(self, "_nvml", None)
        if nvml is not None and nvml.series.gpu_util:
            self.metrics.gpu_util.set(nvml.series.gpu_util[-1])

    def _request_stop(self, why: str) -> None:
        self.interrupted = self.interrupted or why
        self.stop.set()
        self.table.stop_all()
        with self.wake:
            self.wake.notify_all()

    def _install_signal_handlers(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.getsignal(sig)
            signal.signal(sig, lambda num, _frame: self._request_stop(signal.Signals(num).name))

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore

    # ------------------------------------------------------------------------------------------------ report
    def summary(self) -> RunSummary:
        return summarize(self, time.perf_counter())
