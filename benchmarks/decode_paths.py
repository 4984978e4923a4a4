"""How fast can N 720p H.264 streams be decoded on this machine, and by which path? Frames/s in total, for N
decoders looping one clip, each frame brought to host memory as the runtime needs it (to_ndarray):
threads (PyAV releases the GIL while decoding) with FFmpeg's own threading off or on, one process per stream,
and NVDEC through PyAV's CUDA hwaccel (frames as NV12). Writes decode_paths.json under $OUT.
Usage: python benchmarks/decode_paths.py [N ...]; env SECONDS (5), MODES (all)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

SECONDS = float(os.environ.get("SECONDS", "5"))


def decode_loop(clip: str, mode: str, deadline: float, counts: list, i: int) -> None:
    import av

    kw = {}
    if mode == "nvdec":
        from av.codec.hwaccel import HWAccel

        kw["hwaccel"] = HWAccel(device_type="cuda", allow_software_fallback=False)
    try:
        while time.perf_counter() < deadline:
            with av.open(clip, **kw) as c:
                s = c.streams.video[0]
                s.thread_type = "AUTO" if mode == "threads-ffmpeg-threaded" else "NONE"
                for f in c.decode(s):
                    f.to_ndarray()
                    counts[i] += 1
                    if time.perf_counter() >= deadline:
                        return
    except Exception as e:  # noqa: BLE001
        counts[i] = -1
        print(mode, type(e).__name__, e, file=sys.stderr, flush=True)


def in_threads(clip: str, n: int, mode: str) -> float:
    counts = [0] * n
    deadline = time.perf_counter() + SECONDS
    ts = [threading.Thread(target=decode_loop, args=(clip, mode, deadline, counts, i)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if any(c < 0 for c in counts):
        return float("nan")
    return sum(counts) / SECONDS


def _child(clip: str, seconds: float, q) -> None:
    counts = [0]
    time.sleep(max(0.0, seconds))  # all children start decoding together (spawn takes a while)
    decode_loop(clip, "process", time.perf_counter() + SECONDS, counts, 0)
    q.put(counts[0])


def in_processes(clip: str, n: int) -> float:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    ps = [ctx.Process(target=_child, args=(clip, 8.0, q)) for _ in range(n)]
    for p in ps:
        p.start()
    total = sum(q.get() for _ in ps)
    for p in ps:
        p.join()
    return total / SECONDS


def main() -> None:
    from yolotune.data.synth import write_video

    out = Path(os.environ.get("OUT") or tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    clip = str(write_video(Path(tempfile.mkdtemp()) / "hd.mp4", frames=150, size=(720, 1280), seed=7))
    counts = [int(a) for a in sys.argv[1:]] or [1, 16, 64]
    modes = os.environ.get("MODES", "threads,threads-ffmpeg-threaded,processes,nvdec").split(",")
    rows = {"cores": os.cpu_count(), "seconds": SECONDS, "clip": "synthetic 1280x720 H.264 (yolotune.data.synth)",
            "results": []}
    for n in counts:
        for mode in modes:
            t0 = time.perf_counter()
            fps = in_processes(clip, n) if mode == "processes" else in_threads(clip, n, mode)
            r = {"decoders": n, "mode": mode, "frames_per_s": fps, "wall_s": round(time.perf_counter() - t0, 1)}
            rows["results"].append(r)
            print(json.dumps(r), flush=True)
            (out / "decode_paths.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
