"""NVDEC sessions in threads of one process: frames/s of a camera-like 720p30 H.264 clip decoded through the run's
own decode path (PyAV demux, Annex B, NVDEC, each frame copied into a device tensor: serve/nvdec_capacity.py) with
1 to 56 sessions at once, how much of the GIL that leaves (a pure-Python counter thread's rate beside 8 sessions vs
alone), and one CPU core's FFmpeg decode of the same clip to I420 for scale. What it showed decided that NVDEC's
streams are decoded in processes of their own. Writes nvdec_sessions.json under $OUT (or the working directory).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment  # noqa: E402

import torch  # noqa: E402

from yolotune.data.synth import write_video  # noqa: E402
from yolotune.io import nvdec  # noqa: E402
from yolotune.io.video import FrameGap, VideoReader  # noqa: E402
from yolotune.serve.nvdec_capacity import measure_nvdec  # noqa: E402

SESSIONS = [int(n) for n in os.environ.get("SESSIONS", "1,4,8,14,28,56").split(",")]


def main() -> None:
    dev = torch.device("cuda")
    res: dict = {"benchmark": "nvdec_sessions", "date": time.strftime("%Y-%m-%d"), "environment": environment(),
                 "caps": nvdec.decoder_caps(0, "h264"), "command": "scripts/gpu-check nvdec_sessions.py"}
    with tempfile.TemporaryDirectory() as work:
        clip = str(write_video(Path(work) / "cam.mp4", frames=300, size=(720, 1280), fps=30, seed=5, camera=True))
        res["clip_bytes"] = os.path.getsize(clip)
        t0 = time.perf_counter()
        with VideoReader(clip, decoder=nvdec.nvdec_factory(dev)) as r:
            n = sum(1 for f in r.frames() if not isinstance(f, FrameGap))
            res["one_session"] = {"frames": n, "fps": n / (time.perf_counter() - t0), "decoded_on": r.decoded_on}
        for sessions in SESSIONS:
            res[f"threads_{sessions}"] = measure_nvdec(clip, dev, sessions=sessions, seconds=2.0).to_dict()
            print(sessions, round(res[f"threads_{sessions}"]["frames_per_s"]), flush=True)
        stop, ticks = threading.Event(), [0]

        def spin():
            while not stop.is_set():
                ticks[0] += 1

        th = threading.Thread(target=spin)
        th.start()
        time.sleep(1.0)
        alone, ticks[0] = ticks[0], 0
        t0 = time.perf_counter()
        cap = measure_nvdec(clip, dev, sessions=8, seconds=1.0)
        beside = ticks[0] / (time.perf_counter() - t0)
        stop.set()
        th.join()
        res["gil"] = {"spin_alone_per_s": alone, "spin_with_8_sessions_per_s": beside, "fps": cap.frames_per_s}
        import av

        with av.open(clip) as c:
            s = c.streams.video[0]
            s.thread_type = "NONE"
            t0, k = time.perf_counter(), 0
            for f in c.decode(s):
                f.to_ndarray(format="yuv420p")
                k += 1
        res["cpu_one_core_fps"] = k / (time.perf_counter() - t0)
    print(json.dumps({k: v for k, v in res.items() if k in ("one_session", "gil", "cpu_one_core_fps")}))
    (Path(os.environ.get("OUT", ".")) / "nvdec_sessions.json").write_text(json.dumps(res, indent=2, default=str))


if __name__ == "__main__":
    main()
