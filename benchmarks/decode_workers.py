"""Threads or processes for stream decoding? Frames/s delivered to the scheduler's process by N PyAV decoders,
720p H.264 to RGB arrays: N threads in one process (PyAV releases the GIL while decoding and converting) vs N
processes handing frames over through shared memory (one copy per frame, no pickling of pixels).
Writes decode_workers.json under $OUT. Usage: python benchmarks/decode_workers.py [N ...]"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np

SECONDS = float(os.environ.get("SECONDS", "6"))
H, W = 720, 1280


def decode_loop(clip: str, deliver, stop: threading.Event | None, deadline: float) -> None:
    import av

    while time.perf_counter() < deadline:
        with av.open(clip) as c:
            s = c.streams.video[0]
            s.thread_type = "NONE"  # one core per stream: many streams share the machine's cores
            for f in c.decode(s):
                deliver(f.to_ndarray(format="rgb24"))
                if time.perf_counter() >= deadline:
                    return


def with_threads(clip: str, n: int) -> float:
    counts = [0] * n
    deadline = time.perf_counter() + SECONDS

    def run(i: int) -> None:
        def deliver(_img) -> None:
            counts[i] += 1
        decode_loop(clip, deliver, None, deadline)

    ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(counts) / SECONDS


def _child(clip: str, name: str, slots: int, free, full, seconds: float) -> None:
    shm = shared_memory.SharedMemory(name=name)
    ring = np.ndarray((slots, H, W, 3), np.uint8, buffer=shm.buf)

    def deliver(img) -> None:
        k = free.get()
        ring[k] = img
        full.put(k)

    decode_loop(clip, deliver, None, time.perf_counter() + seconds)
    full.put(-1)
    shm.close()


def with_processes(clip: str, n: int, slots: int = 4) -> float:
    ctx = mp.get_context("spawn")
    procs, rings, queues = [], [], []
    for _ in range(n):
        shm = shared_memory.SharedMemory(create=True, size=slots * H * W * 3)
        free, full = ctx.Queue(), ctx.Queue()
        for k in range(slots):
            free.put(k)
        rings.append(shm)
        queues.append((free, full))
        procs.append(ctx.Process(target=_child, args=(clip, shm.name, slots, free, full, SECONDS)))
    for p in procs:
        p.start()
    got = [0] * n
    done = [False] * n
    out = np.empty((H, W, 3), np.uint8)
    t0 = None
    while not all(done):
        for i, (free, full) in enumerate(queues):
            if done[i]:
                continue
            k = full.get()
            t0 = t0 or time.perf_counter()
            if k < 0:
                done[i] = True
                continue
            out[...] = np.ndarray((slots, H, W, 3), np.uint8, buffer=rings[i].buf)[k]  # what the scheduler would read
            got[i] += 1
            free.put(k)
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join()
    for shm in rings:
        shm.close()
        shm.unlink()
    return sum(got) / elapsed


def main() -> None:
    from yolotune.data.synth import write_video

    out = Path(os.environ.get("OUT") or tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    clip = str(write_video(Path(tempfile.mkdtemp()) / "hd.mp4", frames=150, size=(H, W), seed=7))
    counts = [int(a) for a in sys.argv[1:]] or [1, 2, 4]
    rows = {"cores": os.cpu_count(), "seconds": SECONDS, "resolution": f"{W}x{H}", "results": []}
    for n in counts:
        r = {"decoders": n, "threads_fps": with_threads(clip, n), "processes_fps": with_processes(clip, n)}
        r["threads_vs_processes"] = r["threads_fps"] / r["processes_fps"]
        rows["results"].append(r)
        print(json.dumps(r), flush=True)
    (out / "decode_workers.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
