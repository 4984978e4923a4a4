"""Decoder processes: sources spread over a few processes, frames handed over through shared memory.

Decoders in threads of one process share one GIL with the engine thread and starve it; processes do not
(benchmarks/results/serve/decode_paths_h100.json). So: P processes (one per core, leaving two to the engine and sinks), each running its share of the sources as
SourceWorker threads. A decoded frame is copied into a slot of its stream's shared-memory ring; only a small message
crosses the pipe. On a GPU the runtime page-locks each ring (cudaHostRegister), so a batch's frames are DMA'd to the
device straight from their slots, with no copy in the runtime process, on cores the decoders keep busy
(benchmarks/results/serve/serve_bench_h100_b64_pinned_rings.json). A slot goes back to its
decoder once the batch that read it has been collected.

Backpressure: a stream's ring has a fixed number of slots. A file source waits for a free slot (it never drops). A
camera-like source decodes only while its queue in the runtime has room: the runtime counts the frames that leave
each queue into memory shared with the decoder processes, so a decoder knows its stream's frames still waiting
without a message; frames dropped oldest-first by the runtime's FrameQueue free their slots at once.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import queue
import threading
import time
from multiprocessing import connection, shared_memory

import numpy as np

from yolotune.capture_guard import CAPTURE_GUARD
from yolotune.interpreter import usable_cores
from yolotune.io.nvdec import NV12Picture
from yolotune.io.stream_specs import SourceSpec
from yolotune.io.streams import SourceStatus, StreamFrame
from yolotune.serve.decoder_process import DecoderOptions, attach_ring, decoder_main, frame_nbytes
from yolotune.serve.pool_memory import RingLedger, StreamCounters
from yolotune.serve.queues import FrameQueue

__all__ = ["DecoderOptions", "DecoderPool", "decoder_cpus", "decoder_processes", "frame_nbytes"]


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
                 on_event, processes: int | None = None, pin=None, nvdec_processes: int = 0,
                 nvdec_device: int | None = None):
        # the runtime's list of queues, by stream: a stream added later (add) has its queue appended there first
        self.queues, self.stop_event, self.on_event = queues, stop, on_event
        # pin(buffer) -> unpin or None: page-locks each ring once attached, so the engine DMAs frames straight from
        # the slots (no copy in this process); then a slot is given back only once its batch is collected
        self.pin = pin
        self.sources: dict[int, RemoteSource] = {}  # by stream number: streams decoded elsewhere take numbers too
        n = processes if processes is not None else decoder_processes(len(specs))
        # the last nvdec_processes processes decode on NVDEC into device rings (serve/decoder_process.py)
        m = nvdec_processes if nvdec_device is not None else 0
        self.nvdec_procs = set(range(n, n + m))
        ctx = mp.get_context("spawn")  # the runtime has CUDA and threads: never fork it
        self.slots = opt.slots
        # per stream: the frames that left its queue (read by its decoder process: Admission) and the limit its
        # Admission sets (read by its queue here)
        self.counters = StreamCounters()
        self.procs, self.out_conns, self.in_conns, self.owner = [], [], [], {}
        # per process: the streams it starts with (a list it gets when it starts, so make_rings can fill it in)
        self._assigned: list[list] = [[] for _ in range(n + m)]
        self._load = [0] * (n + m)  # streams each process decodes now
        for i, spec in enumerate(specs):
            p, item = self._register(i, spec)
            self._assigned[p].append(item)
        for p in range(n + m):
            recv_end, send_end = ctx.Pipe(duplex=False)
            child_recv, runtime_send = ctx.Pipe(duplex=False)
            popt = dataclasses.replace(opt, nvdec_device=nvdec_device if p in self.nvdec_procs else None)
            kind = "nvdec" if p in self.nvdec_procs else "decoder"
            self.procs.append(ctx.Process(target=decoder_main, args=(self._assigned[p], send_end, child_recv, popt),
                                          name=f"yolotune-{kind}-{p}", daemon=True))
            self.out_conns.append(recv_end)
            self.in_conns.append(runtime_send)
        self._attached: dict[str, shared_memory.SharedMemory] = {}
        self._device_rings: dict[str, object] = {}  # NVDEC processes' rings in device memory, mapped once (CUDA IPC)
        self.device_ring_bytes = 0
        self._owned: list[str] = []  # rings made here (make_rings): unlinked here
        self._unpin: dict[str, object] = {}
        self.ledger = RingLedger()  # which rings still hold frames: those of streams that ended are given back
        self._closing: list[shared_memory.SharedMemory] = []  # given back, still viewed by a frame on its way out
        self._closing_lock = threading.Lock()
        # page-locking a ring takes a while (tens of MB): a thread of its own, so frames keep flowing meanwhile
        # (through staging until it is done) and no CUDA call is made on the receiver's thread
        self._to_pin: queue.Queue = queue.Queue()
        self._pinner = threading.Thread(target=self._pin_rings, name="yolotune-ring-pinner", daemon=True) if pin else None
        self.mapped_bytes = 0  # the rings attached here (resident once read: part of this process's RSS)
        self._send_locks = [threading.Lock() for _ in self.procs]
        self._started = False
        self._receiver = threading.Thread(target=self._receive, name="yolotune-decoders", daemon=True)

    def _register(self, i: int, spec: SourceSpec, nvdec: bool = False) -> tuple[int, tuple]:
        """Stream ``i`` (its queue already in ``queues``): its counters, its process (the least busy of its kind,
        NVDEC or CPU; the one it had, if it comes back as that kind), its RemoteSource. Returns the process and what
        that process is given."""
        q = self.queues[i]
        block, offset = self.counters.place(i)
        left, limit = self.counters.views(i)
        left[0], limit[0] = 0, q.capacity
        q.left_counter, q.limit_view = left, limit
        group = [k for k in range(len(self._load)) if (k in self.nvdec_procs) == nvdec] or list(range(len(self._load)))
        p = self.owner.get(i)
        if p is None or p not in group:
            p = self.owner[i] = min(group, key=self._load.__getitem__)
        self._load[p] += 1
        self.sources[i] = RemoteSource(i, spec, self)
        return p, (i, spec, None, (block, offset), nvdec and p in self.nvdec_procs)

    def add(self, i: int, spec: SourceSpec, nvdec: bool = False) -> RemoteSource:
        """Decode stream ``i`` too (its queue is ``queues[i]``; ``nvdec``: in an NVDEC process), also while running;
        a stream removed before may come back under its number once its queue is done."""
        p, item = self._register(i, spec, nvdec and bool(self.nvdec_procs))
        if self._started:
            self._send(p, ("add", item))
        else:
            self._assigned[p].append(item)
        return self.sources[i]

    def remove(self, i: int) -> None:
        """Stop decoding stream ``i``: its process ends its source, which closes its queue here."""
        p = self.owner[i]
        self._load[p] = max(0, self._load[p] - 1)
        if self._started:
            self._send(p, ("remove", i))
        else:
            self._assigned[p][:] = [a for a in self._assigned[p] if a[0] != i]
            self.queues[i].close()

    def make_rings(self, frame_bytes: dict[int, int]) -> float:
        """Before start: make (and page-lock) the rings of the streams whose frame size is known, so no clock runs
        while they are made. Returns the seconds it took. Other streams' rings are made by their decoder process."""
        t0 = time.perf_counter()
        made = []
        for assigned in self._assigned:
            for j, (i, spec, _, counters, on_nvdec) in enumerate(assigned):
                nbytes = frame_bytes.get(i)
                if not nbytes or on_nvdec:  # NVDEC's frames go to a device ring
                    continue
                shm = shared_memory.SharedMemory(create=True, size=self.slots * nbytes)
                self._attached[shm.name] = shm
                self._owned.append(shm.name)
                self.mapped_bytes += shm.size
                made.append((shm.name, shm))
                assigned[j] = (i, spec, (shm.name, nbytes), counters, on_nvdec)
        if self.pin is not None and made:
            # on a thread of its own, like later rings: a refused registration leaves a CUDA error behind on the
            # calling thread, and this one goes on to launch the engine's kernels
            for name, shm in made:
                self._to_pin.put(("pin", name, shm))
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
        self._close_now()
        self._attached.clear()
        self._device_rings.clear()
        self._owned.clear()
        self._started = False
        for q in self.queues:
            q.left_counter = q.limit_view = None
        self.counters.close()

    def _pin_rings(self) -> None:
        while (item := self._to_pin.get()) is not None:
            action, name, shm = item
            if action == "pin":
                unpin = self.pin(shm.buf)
                if unpin is not None:
                    self._unpin[name] = unpin
            else:  # a ring given back: unpinned here too, as page-locking it was, then closed
                unpin = self._unpin.pop(name, None)
                if unpin is not None:
                    unpin()
                self._close(shm)

    def _retire(self, rings: list[tuple[str, int]]) -> None:
        """Rings no longer needed (their stream ended, their frames processed): unmapped here, and closed (unlinked)
        by the decoder process that made them."""
        for name, stream in rings:
            ring = self._device_rings.pop(name, None)
            if ring is not None:  # unmapped here, freed by its NVDEC process
                self.device_ring_bytes -= ring.numel()
                self._send(self.owner[stream], ("drop", stream, name))
                continue
            shm = self._attached.pop(name, None)
            if shm is None:
                continue
            self.mapped_bytes -= shm.size
            self._send(self.owner[stream], ("drop", stream, name))
            if name in self._owned:
                self._owned.remove(name)
                shm.unlink()
            if self._pinner is not None:
                self._to_pin.put(("unpin", name, shm))
            else:
                self._close(shm)

    def _close(self, shm: shared_memory.SharedMemory) -> None:
        """Unmap ``shm`` now, or once no frame views it any more (a frame on its way to a sink)."""
        with self._closing_lock:
            self._closing.append(shm)
            still = []
            for s in self._closing:
                try:
                    s.close()
                except BufferError:
                    still.append(s)
            self._closing = still

    def ring_streams(self) -> dict[str, int]:
        """The rings mapped here now, and the stream each belongs to."""
        return {name: stream for name, stream in self.ledger.streams().items()
                if name in self._attached or name in self._device_rings}

    def _close_now(self) -> None:
        for shm in self._closing:
            try:
                shm.close()
            except BufferError:  # freed with the process
                pass
        self._closing.clear()

    def release(self, frames: list[StreamFrame]) -> None:
        """Give the frames' slots back to their decoder processes (their pixels have been read)."""
        by_proc: dict[int, list] = {}
        done: list = []
        for f in frames:
            slot = getattr(f, "slot", None)
            if slot is not None:
                by_proc.setdefault(self.owner[f.stream], []).append((f.stream, *slot))
                f.slot = None
                done += self.ledger.released(slot[0])
        for p, items in by_proc.items():
            self._send(p, ("free", items))
        if done:
            self._retire(done)

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
            ring = self._device_rings.get(name)
            if ring is not None:  # NVDEC: the frame is in device memory, read in place
                image = NV12Picture(ring[k])
            else:
                shm = self._attached.get(name)
                if shm is None:
                    shm = self._attached[name] = attach_ring(name)
                    self.mapped_bytes += shm.size
                    if self._pinner is not None:
                        self._to_pin.put(("pin", name, shm))
                nbytes = int(np.prod(shape))
                image = np.ndarray(shape, np.uint8, buffer=shm.buf, offset=k * nbytes)
            frame = StreamFrame(stream, index, image, decoded_at, pts, slot=(name, k), on_drop=self.release,
                                captured_at=captured_at)
            self.ledger.delivered(name, stream)
            st = src.status
            st.frames += 1
            st.lag_s, st.max_lag_s, st.received, st.dropped = lag, max_lag, received, dropped
            if not self.queues[stream].put(frame, self.stop_event):
                self.release([frame])
        elif kind == "device_ring":  # an NVDEC process's ring for this stream, mapped once
            rebuild, args = msg[3]
            with CAPTURE_GUARD.shared():  # mapping it must not meet the engine thread's capture of a graph
                ring = self._device_rings[msg[2]] = rebuild(*args)
            self.device_ring_bytes += ring.numel()
        elif kind == "event":
            state, message, when, snapshot = msg[2], msg[3], msg[4], msg[5]
            self._update(src.status, snapshot)
            self.on_event(stream, state, message, when)
        elif kind == "status":
            self._update(src.status, msg[2])
        elif kind == "closed":
            self.queues[stream].close()
            self._retire(self.ledger.ended(stream))

    @staticmethod
    def _update(st: SourceStatus, snapshot: dict) -> None:
        """A decoder process's status of its source; frames are counted here, as they arrive."""
        frames = st.frames
        for key, value in snapshot.items():
            setattr(st, key, value)
        st.frames = max(frames, st.frames) if snapshot.get("state") in ("finished", "failed", "stopped",
                                                                        "never-connected") else frames


