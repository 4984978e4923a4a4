"""The runtime's own ceiling: N looped tiny (96x64) file streams through StreamRuntime with an engine that does
nothing, for 5 s, against the same N PyAV decoders alone. Shows whether scheduling, queues and routing (Python, one
GIL) or decoding limits a many-stream run. Usage: python benchmarks/serve_overhead.py"""

import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from yolotune.data.synth import write_video
from yolotune.serve.runtime import RunOptions, StreamRuntime
from yolotune.serve.specs import SourceSpec
from yolotune.types import Detections, InputRef

clip = write_video(Path(tempfile.mkdtemp()) / "tiny.mp4", frames=60, size=(64, 96), seed=1)


def decoders_alone(n: int, seconds: float = 4.0) -> float:
    import av

    counts, stop = [0] * n, time.perf_counter() + seconds

    def run(i: int) -> None:
        while time.perf_counter() < stop:
            with av.open(str(clip)) as c:
                s = c.streams.video[0]
                s.thread_type = "AUTO"
                for f in c.decode(s):
                    f.to_ndarray(format="rgb24")
                    counts[i] += 1
                    if time.perf_counter() >= stop:
                        return

    ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(counts) / seconds


class Null:
    device = torch.device("cpu"); batch = 64
    def detect(self, frames):
        return [Detections(InputRef("f"), f.shape[:2], np.zeros((0,4),np.float32), np.zeros(0,np.float32), np.zeros(0,np.int64)) for f in frames]
for n in (10, 100):
    specs = [SourceSpec(str(clip), "file", f"s{i}", loop=True) for i in range(n)]
    s = StreamRuntime(Null(), specs, RunOptions(out=None, max_batch=64, max_wait_ms=5, queue_size=4, duration_s=5)).run()
    print(json.dumps({"streams": n, "runtime_fps": round(s["fps"]), "mean_batch": round(s["mean_batch"], 1),
                      "decoders_alone_fps": round(decoders_alone(n))}))
