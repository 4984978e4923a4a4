"""The runtime's streams by number: each one's spec, queue, counters, sink and source, added before or during a run
and removed during it.

A number is never given to another stream: a removed stream keeps its results, counts and sink, and a stream added
back under its name (once its queue has drained) goes on under its number, with fresh counts, appending to the same
outputs. The runtime's threads read these lists by number; ``lock`` keeps a stream being added from being seen half
made.
"""

from __future__ import annotations

import threading
from typing import Callable

from yolotune.io.stream_specs import SourceSpec, name_streams
from yolotune.io.streams import Backoff, SourceWorker, decoder_threads
from yolotune.serve.metrics import StreamStats
from yolotune.serve.queues import FrameQueue


class StreamTable:
    def __init__(self, runtime, make_sink: Callable[[SourceSpec], object | None]):
        self.rt = runtime
        self.make_sink = make_sink
        self.specs: list[SourceSpec] = []
        self.queues: list[FrameQueue] = []  # the scheduler's list too: changed only under the backlog's lock
        self.stats: list[StreamStats] = []
        self.sinks: list = []
        self.workers: list = []  # SourceWorker threads, or a decoder pool's RemoteSources
        self.stops: list[threading.Event] = []  # each stream's own: set when it is removed or the run stops
        self.removed: set[int] = set()
        self.lock = threading.RLock()
        self.started = False

    def running_names(self) -> dict[str, int]:
        """Streams not removed, by lower-case name."""
        with self.lock:
            return {s.name.lower(): i for i, s in enumerate(self.specs) if i not in self.removed}

    def capacity(self, spec: SourceSpec, in_process: bool = False) -> int:
        """Frames a stream's queue holds: see StreamRuntime.__init__. A stream decoded in this process (threads,
        or NVDEC in a thread here) holds its queue's frames and no more."""
        opt = self.rt.opt
        return opt.queue_size if spec.drops or in_process or self.rt.decoders == "threads" else 4 * opt.queue_size

    def add(self, spec: SourceSpec) -> int:
        """Stream ``spec`` (named if it has no name yet; a name that runs already is refused), its source started if
        the run is; returns its number."""
        rt = self.rt
        with self.lock:
            running = set(self.running_names())
            # a given name is checked; a default one (parse_source's, or name_streams' among others) is kept unless
            # it runs already, when it is made unique
            if spec.named or not spec.name or spec.name.lower() in running:
                name_streams([spec], running)
            i = next((k for k, s in enumerate(self.specs) if s.name.lower() == spec.name.lower()), None)
            if i is not None and not self.queues[i].done:
                raise ValueError(f"stream {spec.name!r} is still stopping: add it again in a moment")
            rt.router.retain({k for k, q in enumerate(self.queues) if not q.done})  # ended streams leave NVDEC
            nvdec = rt.router.take(len(self.specs) if i is None else i, spec)
            in_process = nvdec and not (rt.pool is not None and rt.pool.nvdec_procs)
            queue = FrameQueue(self.capacity(spec, in_process), "drop_oldest" if spec.drops else "block", rt.backlog)
            stop = threading.Event()
            with rt.backlog.lock:
                if i is None:
                    i = len(self.specs)
                    self.specs.append(spec)
                    self.queues.append(queue)
                    self.stats.append(StreamStats(spec.name))
                    self.sinks.append(self.make_sink(spec))
                    self.workers.append(None)
                    self.stops.append(stop)
                else:  # back under its number: its sink goes on, its counts start again
                    self.specs[i], self.queues[i], self.stops[i] = spec, queue, stop
                    self.stats[i] = StreamStats(spec.name)
                    self.removed.discard(i)
            rt.metrics.add(i, spec.name)
            self.workers[i] = self._source(i, spec, queue, stop, nvdec)
            if self.started:
                self.workers[i].start()
        return i

    def _source(self, i: int, spec: SourceSpec, queue: FrameQueue, stop: threading.Event, nvdec: bool = False):
        rt, opt = self.rt, self.rt.opt
        if nvdec and rt.pool is not None and rt.pool.nvdec_procs:  # NVDEC in a decoder process: device rings
            return rt.pool.add(i, spec, nvdec=True)
        if nvdec:  # decoded on NVDEC by a thread here: its frames stay in device memory
            return SourceWorker(i, spec, queue, stop, opt.open_timeout_s, opt.read_timeout_s, opt.max_retries,
                                Backoff(opt.backoff_base_s, opt.backoff_cap_s), on_event=rt._on_event,
                                pixel_format=rt.pixel_format, decoder_threads=1, on_demand=opt.on_demand,
                                video_decoder=rt.router.factory)
        if rt.pool is not None:
            return rt.pool.add(i, spec)
        # FFmpeg's own threads per decoder: many decoders share the cores (counted with the streams the run
        # started with: a first stream given every core decoded with a frame-threading delay)
        threads = decoder_threads(max(rt.expected_streams, len(self.specs) - len(self.removed)))
        return SourceWorker(i, spec, queue, stop, opt.open_timeout_s, opt.read_timeout_s, opt.max_retries,
                            Backoff(opt.backoff_base_s, opt.backoff_cap_s), on_event=rt._on_event,
                            pixel_format=rt.pixel_format, decoder_threads=threads, nice=opt.decoder_nice,
                            on_demand=opt.on_demand)

    def remove(self, name: str) -> int:
        """Stop stream ``name``: its source ends and its queue closes; frames already decoded are still processed.
        Returns its number; KeyError when no such stream runs."""
        with self.lock:
            i = self.running_names().get(name.lower())
            if i is None:
                raise KeyError(f"no stream {name!r} is running")
            self.removed.add(i)
            self.stops[i].set()
            if i in self.rt.router.on_nvdec:
                self.rt.router.release(i)
            if self.rt.pool is not None and i in self.rt.pool.owner:
                self.rt.pool.remove(i)
        self.rt._on_event(i, "removed", "removed while running")
        return i

    def start(self) -> None:
        with self.lock:
            self.started = True
            workers = list(self.workers)
        for w in workers:
            w.start()

    def stop_all(self) -> None:
        with self.lock:
            for stop in self.stops:
                stop.set()

    def rows(self) -> list[tuple]:
        """(number, spec, stats, queue, source) of every stream, consistent with one another."""
        with self.lock:
            return list(zip(range(len(self.specs)), self.specs, self.stats, self.queues, self.workers))
