"""What runs inside a decoder process (serve/decoders.py starts them): its sources as SourceWorker threads, each
frame copied into a slot of its stream's shared-memory ring, a small message per frame to the runtime.

A CPU decoder process imports no torch: it must not pay for it (about 2 s and 300 MB each). An NVDEC decoder process
(``nvdec_device`` set) does: its streams are decoded on the GPU's NVDEC engines, and each frame is copied into a slot
of its stream's ring in device memory, which the runtime maps once through CUDA IPC; no frame crosses the host.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from dataclasses import dataclass
from multiprocessing import shared_memory

import numpy as np

from yolotune.io.nvdec import NV12Picture
from yolotune.io.stream_specs import SourceSpec
from yolotune.io.streams import Backoff, SourceStatus, SourceWorker, StreamFrame


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
    # Added to the decoder processes' niceness: the engine thread's delay lands on every frame, a decoder has its
    # ring's slack (benchmarks/results/serve/serve_stalls_h100_nice_ab.json)
    nice: int = 5
    cpus: tuple[int, ...] | None = None  # the cores the decoder processes may run on (decoder_cpus); None: any
    queue_size: int = 8  # a camera-like stream's queue in the runtime: what its decoder may have waiting there
    on_demand: bool = True  # camera-like streams decode only what their queue has room for
    keep_running: bool = False  # streams come and go: the process lives until the runtime says stop
    nvdec_device: int | None = None  # decode on this GPU's NVDEC engines into device rings (io/nvdec.py)
    device_slots: int = 8  # slots of a device ring (NV12 frames in GPU memory: fewer than a host ring's)
    switch_interval_s: float | None = None  # the process's GIL switch interval (sys.setswitchinterval); None: Python's


COUNTER_BLOCK = 256  # streams per block of shared counters (serve/decoders.py StreamCounters)


def counter_views(buf, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """A stream's two shared counters in a block: frames that left its queue in the runtime, and its Admission
    limit."""
    block = np.ndarray((2, COUNTER_BLOCK), np.int64, buffer=buf)
    return block[0, offset:offset + 1], block[1, offset:offset + 1]


def frame_nbytes(hw: tuple[int, int], pixel_format: str) -> int:
    """Bytes of one decoded frame as a SourceWorker delivers it (I420 needs even sizes; odd ones come as RGB)."""
    h, w = hw
    return h * 3 // 2 * w if pixel_format == "yuv420p" and h % 2 == 0 and w % 2 == 0 else h * w * 3


class _Ring:
    """One stream's slots in shared memory: the runtime's, made before the run when the frame size is known (a
    file's), else made here at the first frame (and again if the frame size changes), and then owned here."""

    def __init__(self, slots: int, nbytes: int, name: str | None = None):
        self.nbytes, self.owned = nbytes, name is None
        self.shm = shared_memory.SharedMemory(create=True, size=slots * nbytes) if name is None else attach_ring(name)
        self.free: queue.Queue[int] = queue.Queue()
        for k in range(slots):
            self.free.put(k)

    def close(self) -> None:
        self.shm.close()
        if self.owned:
            self.shm.unlink()


class _DeviceRing:
    """One stream's slots in device memory (NVDEC processes): NV12 frames, shared once with the runtime through CUDA
    IPC (torch's reduction of the tensor, sent over the pipe); freed when the runtime no longer reads it."""

    count = 0

    def __init__(self, slots: int, shape: tuple[int, int], device: int, send, stream: int):
        import torch
        from torch.multiprocessing.reductions import reduce_tensor

        _DeviceRing.count += 1
        self.name = f"nvdec-{os.getpid()}-{stream}-{_DeviceRing.count}"
        self.shape = tuple(shape)
        self.nbytes = int(np.prod(shape))
        self.tensor = torch.empty((slots, *shape), dtype=torch.uint8, device=f"cuda:{device}")
        self.copies = torch.cuda.Stream(self.tensor.device)
        # waited on without spinning: a process holds dozens of streams' threads, each waiting once per frame
        self.copied = torch.cuda.Event(blocking=True)
        self.free: queue.Queue[int] = queue.Queue()
        for k in range(slots):
            self.free.put(k)
        send(("device_ring", stream, self.name, reduce_tensor(self.tensor)))

    def write(self, k: int, picture: NV12Picture) -> None:
        """Copy ``picture`` into slot ``k`` on the stream it was written on (the decoder's: no wait between the two
        copies), and wait for it: in the slot before the runtime hears of it."""
        import torch

        stream = picture.written_on or self.copies
        with torch.cuda.stream(stream):
            self.tensor[k].copy_(picture.planes)
            self.copied.record(stream)
        self.copied.synchronize()

    def close(self) -> None:
        self.tensor = None


class _SlotWriter:
    """What a SourceWorker puts frames into, in a decoder process: a ring slot and a message to the runtime."""

    def __init__(self, stream: int, slots: int, send, rings: dict, premade: tuple[str, int] | None = None,
                 capacity: int = 8, left=None, limit=None, device: int | None = None, device_slots: int = 8):
        self.stream, self.slots, self.send, self.rings = stream, slots, send, rings
        self.device, self.device_slots = device, device_slots  # NVDEC processes: the GPU of the device rings
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
        on_device = isinstance(frame.image, NV12Picture)  # decoded on NVDEC: into a device ring
        if on_device:
            image = frame.image
        else:
            image = frame.image if hasattr(frame.image, "write_into") else np.ascontiguousarray(frame.image)
        kind = (_DeviceRing, tuple(image.shape)) if on_device else (_Ring, image.nbytes)
        if self.ring is None or (type(self.ring), getattr(self.ring, "shape", self.ring.nbytes)) != kind:
            if self.ring is not None:
                self.old.append(self.ring)
            if on_device:
                self.ring = _DeviceRing(self.device_slots, image.shape, self.device, self.send, self.stream)
            else:
                name = self.premade[0] if self.premade and self.premade[1] == image.nbytes else None
                self.premade = None
                self.ring = _Ring(self.slots, image.nbytes, name)
            self.rings[self.stream] = self.ring
        while True:  # block until the runtime gives a slot back (files never drop; live ones are dropped there)
            try:
                k = self.ring.free.get(timeout=0.1)
                break
            except queue.Empty:
                if stop is not None and stop.is_set():
                    return False
        if on_device:
            self.ring.write(k, image)
        else:
            view = np.ndarray(image.shape, image.dtype, buffer=self.ring.shm.buf, offset=k * self.ring.nbytes)
            if hasattr(image, "write_into"):
                image.write_into(view)
            else:
                view[...] = image
        st = self.status or SourceStatus()
        self.sent += 1
        self.send(("frame", self.stream, ring_name(self.ring), k, tuple(image.shape), frame.index, frame.decoded_at,
                   frame.pts, frame.captured_at, st.lag_s, st.max_lag_s, st.received, st.dropped))
        return True

    def close(self) -> None:
        if self.status is not None:  # its last state and counts first: a stream removed mid-run ends here
            self.send(("status", self.stream, self.status.snapshot()))
        self.send(("closed", self.stream))


def ring_name(ring) -> str:
    return ring.name if isinstance(ring, _DeviceRing) else ring.shm.name


# what a decoder process is given per stream: (stream, spec, premade ring (name, frame bytes) or None, counters
# (block name, offset in it), whether NVDEC decodes it)
Assignment = tuple[int, SourceSpec, "tuple[str, int] | None", "tuple[str, int] | None", bool]


def decoder_main(assigned: list[Assignment], out_conn, in_conn, opt: DecoderOptions) -> None:
    """A decoder process: one SourceWorker thread per assigned source (and per source added later) until the
    runtime says stop, or, unless ``opt.keep_running``, until every source has ended."""
    if opt.switch_interval_s:
        # dozens of source threads share the GIL here: each frame's brief waits (decode, copy, pipe) then cost
        # the switch interval to get it back, not Python's 5 ms (benchmarks/results/serve/nvdec_streams_h100.json)
        sys.setswitchinterval(opt.switch_interval_s)
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
    video_decoder = None
    if opt.nvdec_device is not None:  # this process decodes on NVDEC (and imports torch for it)
        import torch

        from yolotune.io.nvdec import nvdec_factory

        torch.cuda.set_device(opt.nvdec_device)
        video_decoder = nvdec_factory(torch.device("cuda", opt.nvdec_device), sync=False)  # _DeviceRing.write waits

    def send(msg) -> None:
        with send_lock:
            try:
                out_conn.send(msg)
            except (BrokenPipeError, EOFError, OSError):
                stop.set()  # the runtime is gone

    rings: dict[int, _Ring] = {}
    blocks: dict[str, shared_memory.SharedMemory] = {}  # the runtime's counter blocks, attached once
    writers: dict[int, _SlotWriter] = {}
    retired: list[_SlotWriter] = []  # writers of streams removed and added back: their rings close at the end
    workers: dict[int, tuple[SourceWorker, threading.Event]] = {}
    lock = threading.Lock()
    ending = threading.Event()  # sources stop: the runtime said stop, or every source ended

    def start(index: int, spec: SourceSpec, premade, counters, on_nvdec: bool = False) -> None:
        left = limit = None
        if counters is not None:
            name, offset = counters
            if name not in blocks:
                blocks[name] = attach_ring(name)
            left, limit = counter_views(blocks[name].buf, offset)
        w = _SlotWriter(index, opt.slots, send, rings, premade, opt.queue_size, left, limit, opt.nvdec_device,
                        opt.device_slots)
        own_stop = threading.Event()  # this source's alone: set when it is removed, or when all end
        worker = SourceWorker(index, spec, w, own_stop, opt.open_timeout_s, opt.read_timeout_s, opt.max_retries,
                              Backoff(opt.backoff_base_s, opt.backoff_cap_s),
                              on_event=lambda i, state, message, when, snap: send(("event", i, state, message, when, snap)),
                              pixel_format=opt.pixel_format, decoder_threads=opt.decoder_threads,
                              on_demand=opt.on_demand, video_decoder=video_decoder if on_nvdec else None)
        w.status = worker.status
        with lock:
            if ending.is_set():
                return
            if index in writers:
                retired.append(writers[index])
            writers[index] = w
            workers[index] = (worker, own_stop)
        worker.start()

    def drop_ring(stream: int, name: str) -> None:
        with lock:
            for w in [writers.get(stream), *retired]:
                if w is None:
                    continue
                if w.ring is not None and ring_name(w.ring) == name:
                    w.ring.close()
                    w.ring = None
                for ring in [r for r in w.old if ring_name(r) == name]:
                    ring.close()
                    w.old.remove(ring)
            if stream in rings and ring_name(rings[stream]) == name:
                del rings[stream]

    def end_sources() -> None:
        with lock:
            ending.set()
            for _, own_stop in workers.values():
                own_stop.set()

    def listen() -> None:  # slots given back, streams added and removed, and the stop
        while not stop.is_set():
            try:
                msg = in_conn.recv()
            except (EOFError, OSError):
                break
            if msg[0] == "free":
                for stream, name, k in msg[1]:
                    ring = rings.get(stream)
                    if ring is not None and ring_name(ring) == name:
                        ring.free.put(k)
            elif msg[0] == "add":
                start(*msg[1])
            elif msg[0] == "drop":  # a ring of an ended stream the runtime no longer reads
                drop_ring(msg[1], msg[2])
            elif msg[0] == "remove":
                entry = workers.get(msg[1])
                if entry is not None:
                    entry[1].set()
            elif msg[0] == "stop":
                break
        stop.set()
        end_sources()

    for item in assigned:
        start(*item)
    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    while not ending.wait(0.1):  # until the runtime says stop, or (unless streams may come) every source ended
        with lock:
            ended = all(not w.is_alive() for w, _ in workers.values())
        if ended and not opt.keep_running:
            end_sources()
    with lock:
        running = [w for w, _ in workers.values()]
    for worker in running:
        worker.join()
    for worker in running:  # final states and counts
        send(("status", worker.index, worker.status.snapshot()))
    send(("exit", None))
    stop.wait()  # until the runtime's stop: the rings stay while it may read them
    for w in list(writers.values()) + retired:
        for ring in ([w.ring] if w.ring else []) + w.old:
            ring.close()
    del writers, retired, workers, rings
    for shm in blocks.values():
        try:
            shm.close()
        except BufferError:  # a view still held: freed with the process
            pass


def attach_ring(name: str) -> shared_memory.SharedMemory:
    """Attach to a decoder process's ring; that process owns it and unlinks it. Spawned processes share their
    parent's resource tracker, so before Python 3.13 (no ``track``) attaching only repeats the child's registration."""
    try:
        return shared_memory.SharedMemory(name=name, track=False)  # Python 3.13+
    except TypeError:
        return shared_memory.SharedMemory(name=name)
