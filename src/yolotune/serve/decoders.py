"""Decoder processes: sources spread over a few processes, frames handed over through shared memory.

Measured on the H100 machine (16 cores, 1280x720 H.264, benchmarks/results/serve/decode_paths_h100.json): decoders in
threads of one process deliver 3,011 frames/s however many there are (the GIL), 16 processes 5,254. And with 100
decoder threads beside it, the engine thread waits for the GIL so often that the whole runtime managed 573 frames/s.
So: P processes (one per core, leaving two to the engine and sinks), each running its share of the sources as
SourceWorker threads. A decoded frame is copied into a slot of its stream's shared-memory ring; only a small message
crosses the pipe. On a GPU the runtime page-locks each ring (cudaHostRegister), so a batch's frames are DMA'd to the
device straight from their slots, with no copy in the runtime process (that copy, 88 MB per batch of 64 720p frames,
made on cores the decoders keep busy, held the whole runtime near 600 frames/s on the H100). A slot goes back to its
decoder once the batch that read it has been collected.

Backpressure: a stream's ring has a fixed number of slots. A file source waits for a free slot (it never drops). A
camera-like source decodes only while its queue in the runtime has room: the runtime counts the frames that leave
each queue into memory shared with the decoder processes, so a decoder knows its stream's frames still waiting
without a message; frames dropped oldest-first by the runtime's FrameQueue free their slots at once.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import threading
import time
from dataclasses import dataclass
from multiprocessing import connection, shared_memory

import numpy as np

from yolotune.interpreter import usable_cores
from yolotune.io.stream_specs import SourceSpec
from yolotune.io.streams import Backoff, SourceStatus, SourceWorker, StreamFrame
from yolotune.serve.queues import FrameQueue


@dataclass
class DecoderOptions:
    open_timeout_s: float
    read_timeout_s: float
    max_retries: int | None
    backoff_base_s: float
    backoff_cap_s: float
    pixel_format: str
    slots: int  # ring slots per stream
    decoder_threads: int = 1  # FFmpeg threads per decoder (io.streams.decoder_threads)
    # Added to the decoder processes' niceness: ~100 decoder threads share 16 cores with the engine thread, whose
    # delay lands on every frame, while a decoder has its ring's slack. (An A/B on the H100 showed no consistent
    # p99 change: benchmarks/results/serve/README.md, "the tail".)
    nice: int = 5
    cpus: tuple[int, ...] | None = None  # the cores the decoder processes may run on (decoder_cpus); None: any
    queue_size: int = 8  # a camera-like stream's queue in the runtime: what its decoder may have waiting there
    on_demand: bool = True  # camera-like streams decode only what their queue has room for


def decoder_processes(n_sources: int, cores: int | None = None) -> int:
    """How many decoder processes for ``n_sources``: one per core but two (engine and sinks), at most one per source."""
    cores = cores or usable_cores()
    return max(1, min(n_sources, cores - 2))


def decoder_cpus(reserve: int, allowed: set[int] | None = None) -> tuple[int, ...] | None:
    """The cores decoder processes are confined to: all this process may use (``allowed``) but ``reserve`` of them,
    kept for the runtime's own threads (engine, frame handover, sinks), which then never queue for a core behind
    ~100 decoder threads. None (no confinement) where that would leave decoders fewer than 4 cores."""
    if reserve <= 0:
        return None
    if allowed is None:
        if not hasattr(os, "sched_getaffinity"):
            return None
        allowed = os.sched_getaffinity(0)
    cores = sorted(allowed)
    return tuple(cores[reserve:]) if len(cores) - reserve >= 4 else None


# ------------------------------------------------------------------------------------------ in the decoder process
def frame_nbytes(hw: tuple[int, int], pixel_format: str) -> int:
    """Bytes of one decoded frame as a SourceWorker delivers it (I420 needs even sizes; odd ones come as RGB)."""
    h, w = hw
    return h * 3 // 2 * w if pixel_format == "yuv420p" and h % 2 == 0 and w % 2 == 0 else h * w * 3


class _Ring:
    """One stream's slots in shared memory: the runtime's, made before the run when the frame size is known (a
    file's), else made here at the first frame (and again if the frame size changes), and then owned here."""

    def __init__(self, slots: int, nbytes: int, name: str | None = None):
        self.nbytes, self.owned = nbytes, name is None
        self.shm = shared_memory.SharedMemory(create=True, size=slots * nbytes) if name is None else _attach(name)
        self.free: queue.Queue[int] = queue.Queue()
        for k in range(slots):
            self.free.put(k)

    def close(self) -> None:
        self.shm.close()
        if self.owned:
            self.shm.unlink()


class _SlotWriter:
    """What a SourceWorker puts frames into, in a decoder process: a ring slot and a message to the runtime."""

    def __init__(self, stream: int, slots: int, send, rings: dict, premade: tuple[str, int] | None = None,
                 capacity: int = 8, left=None, limit=None):
        self.stream, self.slots, self.send, self.rings = stream, slots, send, rings
        self.premade = premade  # (name, frame bytes) of the ring the runtime made for this stream
        self.ring: _Ring | None = None
        self.old: list[_Ring] = []  # rings of an earlier frame size, kept until the process ends
        self.status: SourceStatus | None = None
        self.capacity = capacity  # the runtime queue's (Admission reads it)
        self.sent = 0
        self.left = left  # one-element view of the runtime's count of this stream's frames that left its queue
        self.limit = limit  # one-element view the runtime's queue reads its Admission limit from

    def set_limit(self, n: int) -> None:
        if self.limit is not None:
            self.limit[0] = n

    def outstanding(self) -> int:
        """Frames sent and not yet taken or dropped by the runtime (in the pipe, or waiting in its queue)."""
        return self.sent - int(self.left[0]) if self.left is not None else 0

    takes_pictures = True  # I420 frames arrive as I420Picture: their planes are copied once, into the slot

    def put(self, frame: StreamFrame, stop: threading.Event | None = None) -> bool:
        image = frame.image if hasattr(frame.image, "write_into") else np.ascontiguousarray(frame.image)
        if self.ring is None or self.ring.nbytes != image.nbytes:
            if self.ring is not None:
                self.old.append(self.ring)
            name = self.premade[0] if self.premade and self.premade[1] == image.nbytes else None
            self.premade = None
            self.ring = self.rings[self.stream] = _Ring(self.slots, image.nbytes, name)
        while True:  # block until the runtime gives a slot back (files never drop; live ones are dropped there)
            try:
                k = self.ring.free.get(timeout=0.1)
                break
            except queue.Empty:
                if stop is not None and stop.is_set():
                    return False
        view = np.ndarray(image.shape, image.dtype, buffer=self.ring.shm.buf, offset=k * self.ring.nbytes)
        if hasattr(image, "write_into"):
            image.write_into(view)
        else:
            view[...] = image
        st = self.status or SourceStatus()
        self.sent += 1
        self.send(("frame", self.stream, self.ring.shm.name, k, image.shape, frame.index, frame.decoded_at, frame.pts,
                   frame.captured_at, st.lag_s, st.max_lag_s, st.received, st.dropped))
        return True

    def close(self) -> None:
        self.send(("closed", self.stream))


def _decoder_main(assigned: list[tuple[int, SourceSpec, tuple[str, int] | None]], out_conn, in_conn,
                  opt: DecoderOptions, left_name: str | None = None, streams: int = 0) -> None:
    """A decoder process: one SourceWorker thread per assigned source until the runtime says stop."""
    if opt.nice:
        try:
            os.nice(opt.nice)
        except OSError:  # not allowed here: decode at the runtime's priority
            pass
    if opt.cpus and hasattr(os, "sched_setaffinity"):
        # every thread so far (numpy's BLAS pool starts its own at import); decoder threads started later inherit it
        tasks = [int(t) for t in os.listdir("/proc/self/task")] if os.path.isdir("/proc/self/task") else [0]
        for tid in tasks:
            try:
                os.sched_setaffinity(tid, opt.cpus)
            except OSError:  # cores gone, not allowed, or the thread ended: it runs anywhere
                pass
    send_lock = threading.Lock()
    stop = threading.Event()

    def send(msg) -> None:
        with send_lock:
            try:
                out_conn.send(msg)
            except (BrokenPipeError, EOFError, OSError):
                stop.set()  # the runtime is gone

    rings: dict[int, _Ring] = {}
    left_shm = _attach(left_name) if left_name else None
    shared = np.ndarray((2, streams), np.int64, buffer=left_shm.buf) if left_shm is not None else None
    left = shared[0] if shared is not None else None
    writers, workers = {}, []
    for index, spec, premade in assigned:
        writers[index] = w = _SlotWriter(index, opt.slots, send, rings, premade, opt.queue_size,
                                         left[index:index + 1] if left is not None else None,
                                         shared[1, index:index + 1] if shared is not None else None)
        worker = SourceWorker(index, spec, w, stop, opt.open_timeout_s, opt.read_timeout_s, opt.max_retries,
                              Backoff(opt.backoff_base_s, opt.backoff_cap_s),
                              on_event=lambda i, state, message, when, snap: send(("event", i, state, message, when, snap)),
                              pixel_format=opt.pixel_format, decoder_threads=opt.decoder_threads,
                              on_demand=opt.on_demand)
        w.status = worker.status
        workers.append(worker)

    def listen() -> None:  # slots given back, and the stop
        while not stop.is_set():
            try:
                msg = in_conn.recv()
            except (EOFError, OSError):
                break
            if msg[0] == "free":
                for stream, name, k in msg[1]:
                    ring = rings.get(stream)
                    if ring is not None and ring.shm.name == name:
                        ring.free.put(k)
            elif msg[0] == "stop":
                break
        stop.set()

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    for worker in workers:  # final states and counts
        send(("status", worker.index, worker.status.snapshot()))
    send(("exit", None))
    stop.wait()
    for w in writers.values():
        for ring in ([w.ring] if w.ring else []) + w.old:
            ring.close()
    if left_shm is not None:
        del left, shared, writers, workers
        left_shm.close()


# --------------------------------------------------------------------------------------------- in the runtime
class RemoteSource:
    """The runtime's view of a source decoded in another process: the same ``status`` as a SourceWorker's."""

    def __init__(self, index: int, spec: SourceSpec, pool: "DecoderPool"):
        self.index, self.spec, self.pool = index, spec, pool
        self.status = SourceStatus()

    def start(self) -> None:
        self.pool.start()

    def join(self, timeout: float | None = None) -> None:
        self.pool.join(timeout)


class DecoderPool:
    """Starts the decoder processes, turns their messages into StreamFrames in the runtime's queues (views on the
    shared slots, handed back by ``release``), and keeps each RemoteSource's status."""

    def __init__(self, specs: list[SourceSpec], queues: list[FrameQueue], stop: threading.Event, opt: DecoderOptions,
                 on_event, processes: int | None = None, pin=None):
        self.queues, self.stop_event, self.on_event = queues, stop, on_event
        # pin(buffer) -> unpin or None: page-locks each ring once attached, so the engine DMAs frames straight from
        # the slots (no copy in this process); then a slot is given back only once its batch is collected
        self.pin = pin
        self.sources = [RemoteSource(i, s, self) for i, s in enumerate(specs)]
        n = processes or decoder_processes(len(specs))
        ctx = mp.get_context("spawn")  # the runtime has CUDA and threads: never fork it
        self.slots = opt.slots
        # per stream: the frames that left its queue (read by its decoder process: Admission) and the limit its
        # Admission sets (read by its queue here)
        self._left_shm = shared_memory.SharedMemory(create=True, size=16 * max(1, len(specs)))
        self._left = np.ndarray((2, len(specs)), np.int64, buffer=self._left_shm.buf)
        self._left[0] = 0
        for i, q in enumerate(queues):
            self._left[1, i] = q.capacity
            q.left_counter, q.limit_view = self._left[0, i:i + 1], self._left[1, i:i + 1]
        self.procs, self.out_conns, self.in_conns, self.owner, self._assigned = [], [], [], {}, []
        for p in range(n):
            # (stream, spec, premade ring): a list the process gets when it starts, so make_rings can fill it in
            assigned = [(i, s, None) for i, s in enumerate(specs) if i % n == p]
            self._assigned.append(assigned)
            recv_end, send_end = ctx.Pipe(duplex=False)
            child_recv, runtime_send = ctx.Pipe(duplex=False)
            for i, _, _ in assigned:
                self.owner[i] = p
            self.procs.append(ctx.Process(target=_decoder_main, args=(assigned, send_end, child_recv, opt,
                                                                      self._left_shm.name, len(specs)),
                                          name=f"yolotune-decoder-{p}", daemon=True))
            self.out_conns.append(recv_end)
            self.in_conns.append(runtime_send)
        self._attached: dict[str, shared_memory.SharedMemory] = {}
        self._owned: list[str] = []  # rings made here (make_rings): unlinked here
        self._unpin: dict[str, object] = {}
        # page-locking a ring takes a while (tens of MB): a thread of its own, so frames keep flowing meanwhile
        # (through staging until it is done) and no CUDA call is made on the receiver's thread
        self._to_pin: queue.Queue = queue.Queue()
        self._pinner = threading.Thread(target=self._pin_rings, name="yolotune-ring-pinner", daemon=True) if pin else None
        self.mapped_bytes = 0  # the rings attached here (resident once read: part of this process's RSS)
        self._send_locks = [threading.Lock() for _ in self.procs]
        self._started = False
        self._receiver = threading.Thread(target=self._receive, name="yolotune-decoders", daemon=True)

    def make_rings(self, frame_bytes: dict[int, int]) -> float:
        """Before start: make (and page-lock) the rings of the streams whose frame size is known, so no clock runs
        while they are made. Returns the seconds it took. Other streams' rings are made by their decoder process."""
        t0 = time.perf_counter()
        made = []
        for assigned in self._assigned:
            for j, (i, spec, _) in enumerate(assigned):
                nbytes = frame_bytes.get(i)
                if not nbytes:
                    continue
                shm = shared_memory.SharedMemory(create=True, size=self.slots * nbytes)
                self._attached[shm.name] = shm
                self._owned.append(shm.name)
                self.mapped_bytes += shm.size
                made.append((shm.name, shm))
                assigned[j] = (i, spec, (shm.name, nbytes))
        if self.pin is not None and made:
            # on a thread of its own, like later rings: a refused registration leaves a CUDA error behind on the
            # calling thread, and this one goes on to launch the engine's kernels
            for item in made:
                self._to_pin.put(item)
            self._to_pin.put(None)
            pinner = threading.Thread(target=self._pin_rings, name="yolotune-ring-pinner", daemon=True)
            pinner.start()
            pinner.join()
        return time.perf_counter() - t0

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        for p in self.procs:
            p.start()
        self._receiver.start()
        if self._pinner is not None:
            self._pinner.start()

    def join(self, timeout: float | None = None) -> None:
        """After the runtime's stop: tell the processes, wait for their last messages, and end them."""
        if not self._started:
            return
        deadline = time.perf_counter() + (timeout or 10.0)
        for k in range(len(self.procs)):
            self._send(k, ("stop",))
        self._receiver.join(max(0.1, deadline - time.perf_counter()))
        for p in self.procs:
            p.join(max(0.1, deadline - time.perf_counter()))
            if p.is_alive():
                p.terminate()
                p.join(1.0)
        for q in self.queues:
            q.close()
        if self._pinner is not None:
            self._to_pin.put(None)
            self._pinner.join(max(0.1, deadline - time.perf_counter()))
        for unpin in self._unpin.values():
            unpin()
        self._unpin.clear()
        for name, shm in self._attached.items():
            try:
                shm.close()
            except BufferError:  # a frame view still held by a caller: freed with the process
                pass
            if name in self._owned:
                shm.unlink()
        self._attached.clear()
        self._owned.clear()
        self._started = False
        for q in self.queues:
            q.left_counter = q.limit_view = None
        del self._left
        self._left_shm.close()
        self._left_shm.unlink()

    def _pin_rings(self) -> None:
        while (item := self._to_pin.get()) is not None:
            name, shm = item
            unpin = self.pin(shm.buf)
            if unpin is not None:
                self._unpin[name] = unpin

    def release(self, frames: list[StreamFrame]) -> None:
        """Give the frames' slots back to their decoder processes (their pixels have been read)."""
        by_proc: dict[int, list] = {}
        for f in frames:
            slot = getattr(f, "slot", None)
            if slot is not None:
                by_proc.setdefault(self.owner[f.stream], []).append((f.stream, *slot))
                f.slot = None
        for p, items in by_proc.items():
            self._send(p, ("free", items))

    def _send(self, p: int, msg) -> None:
        with self._send_locks[p]:
            try:
                self.in_conns[p].send(msg)
            except (BrokenPipeError, OSError):
                # That process has exited: nobody needs its slots back or its stop any more, and its death is
                # reported by the receiver (_process_died), which fails its streams.
                return

    def _receive(self) -> None:
        live = list(self.out_conns)
        while live:
            for conn in connection.wait(live, timeout=0.5):
                try:
                    msg = conn.recv()
                except (EOFError, OSError):  # the process died without saying goodbye
                    live.remove(conn)
                    self._process_died(self.out_conns.index(conn))
                    continue
                if msg[0] == "exit":
                    live.remove(conn)
                    continue
                self._handle(msg)
            if not live:
                break
            if self.stop_event.is_set() and not any(p.is_alive() for p in self.procs):
                break
        for q in self.queues:
            q.close()

    def _process_died(self, p: int) -> None:
        """Its sources fail with the reason; the other processes' streams carry on."""
        proc = self.procs[p]
        proc.join(1.0)
        why = f"decoder process {proc.name} ended unexpectedly (exit code {proc.exitcode})"
        for i, owner in self.owner.items():
            st = self.sources[i].status
            if owner == p and st.state not in ("finished", "failed", "stopped"):
                st.state, st.error, st.last_error = "failed", why, why
                self.on_event(i, "failed", why, time.time())
                self.queues[i].close()

    def _handle(self, msg) -> None:
        kind, stream = msg[0], msg[1]
        src = self.sources[stream]
        if kind == "frame":
            _, _, name, k, shape, index, decoded_at, pts, captured_at, lag, max_lag, received, dropped = msg
            shm = self._attached.get(name)
            if shm is None:
                shm = self._attached[name] = _attach(name)
                self.mapped_bytes += shm.size
                if self._pinner is not None:
                    self._to_pin.put((name, shm))
            nbytes = int(np.prod(shape))
            image = np.ndarray(shape, np.uint8, buffer=shm.buf, offset=k * nbytes)
            frame = StreamFrame(stream, index, image, decoded_at, pts, slot=(name, k), on_drop=self.release,
                                captured_at=captured_at)
            st = src.status
            st.frames += 1
            st.lag_s, st.max_lag_s, st.received, st.dropped = lag, max_lag, received, dropped
            if not self.queues[stream].put(frame, self.stop_event):
                self.release([frame])
        elif kind == "event":
            state, message, when, snapshot = msg[2], msg[3], msg[4], msg[5]
            self._update(src.status, snapshot)
            self.on_event(stream, state, message, when)
        elif kind == "status":
            self._update(src.status, msg[2])
        elif kind == "closed":
            self.queues[stream].close()

    @staticmethod
    def _update(st: SourceStatus, snapshot: dict) -> None:
        """A decoder process's status of its source; frames are counted here, as they arrive."""
        frames = st.frames
        for key, value in snapshot.items():
            setattr(st, key, value)
        st.frames = max(frames, st.frames) if snapshot.get("state") in ("finished", "failed", "stopped",
                                                                        "never-connected") else frames


def _attach(name: str) -> shared_memory.SharedMemory:
    """Attach to a decoder process's ring; that process owns it and unlinks it. Spawned processes share their
    parent's resource tracker, so before Python 3.13 (no ``track``) attaching only repeats the child's registration."""
    try:
        return shared_memory.SharedMemory(name=name, track=False)  # Python 3.13+
    except TypeError:
        return shared_memory.SharedMemory(name=name)
