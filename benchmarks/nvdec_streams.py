"""Camera streams decoded on the CPU vs on NVDEC vs both at once, side by side in one process on one GPU.

Each row: STREAMS looped real-time copies of a camera-like 720p30 H.264 clip (`data synth --camera`: sensor noise,
a pan, a keyframe a second, no B-frames, 3 Mbit/s) through `StreamRuntime` for SECONDS, as `plan` verifies a count:
it holds when no stream lags its clock by a second, nothing drops, every stream keeps ~its rate and the p99 latency
(decode end -> result) is within LATENCY_MS. Per row also the host CPU spent (all cores, from /proc/stat) per stream,
the decoder split (NVDEC / CPU) and where latency went. Modes: cpu (FFmpeg in decoder processes), nvdec (NVDEC
decoder processes, frames in device rings), both (NVDEC up to NVDEC_SHARE streams, the rest on the CPU).
Environment: STREAMS (100,200,300), MODES (cpu,nvdec,both), RUN_SECONDS (30), LATENCY_MS (50), BATCH (32),
NVDEC_SHARE (both: streams on NVDEC, default 2/3 of each count), NVDEC_PROCS (default: a third of the cores),
PRECISION (fp16), SWEEP (extra NVDEC rows: processes/switch-interval-ms pairs). Writes nvdec_streams.json under $OUT (or the working directory).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, run_seconds  # noqa: E402

import torch  # noqa: E402

from yolotune import Detector  # noqa: E402
from yolotune.data.synth import write_video  # noqa: E402
from yolotune.interpreter import switch_interval  # noqa: E402
from yolotune.io.stream_specs import SourceSpec  # noqa: E402
from yolotune.serve.plan import verification_row  # noqa: E402
from yolotune.serve.runtime import RunOptions, StreamRuntime  # noqa: E402

STREAMS = [int(n) for n in os.environ.get("STREAMS", "100,200,300").split(",")]
MODES = os.environ.get("MODES", "cpu,nvdec,both").split(",")
SECONDS = run_seconds("30")
LATENCY_MS = float(os.environ.get("LATENCY_MS", "50"))
BATCH = int(os.environ.get("BATCH", "32"))
SHARE = os.environ.get("NVDEC_SHARE")
NVDEC_PROCS = int(os.environ["NVDEC_PROCS"]) if os.environ.get("NVDEC_PROCS") else None
PRECISION = os.environ.get("PRECISION", "fp16")
# SWEEP="5/5,10/0.5,5/0.5/1": extra NVDEC rows at the last count, as decoder processes / their GIL switch interval
# in ms [/ this process's (the runtime's: its engine thread and the thread receiving every frame share the GIL)]
SWEEP = [(int(p), float(m), float(r[0]) if r else None)
         for p, m, *r in (x.split("/") for x in os.environ.get("SWEEP", "").split(",") if x)]
FPS = 30


def cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine so far (user, nice, system, irq, softirq)."""
    fields = open("/proc/stat").readline().split()[1:8]
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields)
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def row(det, clip: Path, n: int, mode: str, procs: int | None = NVDEC_PROCS,
        switch_ms: float | None = RunOptions.decoder_switch_ms, runtime_switch_ms: float | None = None) -> dict:
    specs = [SourceSpec(str(clip), "file", f"c{i:03d}", loop=True, realtime=True, lossless=True) for i in range(n)]
    share = int(SHARE) if SHARE else (2 * n) // 3
    opts = RunOptions(out=None, max_batch=BATCH, max_wait_ms=min(LATENCY_MS / 4, 1e3 / FPS), queue_size=4,
                      duration_s=SECONDS, video_decode="cpu" if mode == "cpu" else "nvdec",
                      nvdec_streams=share if mode == "both" else None, nvdec_processes=procs,
                      decoder_switch_ms=switch_ms)
    rt = StreamRuntime(det, specs, opts)
    c0 = cpu_seconds()
    previous = sys.getswitchinterval()
    with switch_interval(runtime_switch_ms / 1e3 if runtime_switch_ms else None):
        s = rt.run()
    busy = cpu_seconds() - c0
    out = verification_row(s, n, FPS, SECONDS, LATENCY_MS)
    out.update(mode=mode, video_decode=s.video_decode, cpu_cores_busy=round(busy / max(s.seconds, 1e-9), 2),
               cpu_ms_per_stream_second=round(busy / max(s.seconds, 1e-9) / n * 1e3, 2),
               host_rss_mib=s.host_rss_mib, decoder_switch_ms=switch_ms, runtime_switch_ms=runtime_switch_ms or previous * 1e3,
               failed=[(st.name, st.error or st.last_error) for st in s.streams if st.name in s.failed][:5],
               streams_under_90pct=sum(st.steady_fps < 0.9 * FPS for st in s.streams))
    print(json.dumps({k: out[k] for k in ("mode", "streams", "holds", "total_fps", "min_stream_fps", "max_lag_s",
                                           "dropped", "latency_p99_ms", "cpu_cores_busy", "streams_under_90pct",
                                           "decoder_switch_ms", "runtime_switch_ms")}
                     | {"procs": out["video_decode"].get("nvdec_processes"), "latency_parts_ms": out["latency_parts_ms"],
                        "engine_thread_s": out["engine_thread_s"]}),
          flush=True)
    return out


def main() -> None:
    out_dir = Path(os.environ.get("OUT", "."))
    with tempfile.TemporaryDirectory() as work:
        clip = write_video(Path(work) / "cam720.mp4", frames=300, size=(720, 1280), fps=FPS, seed=21, camera=True)
        rows = []

        def save() -> None:  # after every row: a run cut short keeps what it measured
            result = {"benchmark": "nvdec_streams", "date": time.strftime("%Y-%m-%d"), "environment": environment(),
                      "clip": {"size": [720, 1280], "fps": FPS, "frames": 300, "bytes": os.path.getsize(clip),
                               "kind": "camera-like H.264 (data synth --camera)"},
                      "seconds": SECONDS, "latency_budget_ms": LATENCY_MS, "batch": BATCH, "precision": PRECISION,
                      "rows": rows,
                      "command": "STREAMS={} MODES={} RUN_SECONDS={:g}{} scripts/gpu-check nvdec_streams.py".format(
                          ",".join(map(str, STREAMS)), ",".join(MODES), SECONDS,
                          f" SWEEP={os.environ['SWEEP']}" if SWEEP else "")}
            (out_dir / "nvdec_streams.json").write_text(json.dumps(result, indent=2, default=str))

        with Detector("default", device="cuda", batch=BATCH, precision=PRECISION) as det:
            for n in STREAMS:
                for mode in MODES:
                    rows.append(row(det, clip, n, mode))
                    torch.cuda.synchronize()
                    save()
            for procs, switch, runtime_switch in SWEEP:  # at the largest count
                rows.append(row(det, clip, STREAMS[-1], "nvdec", procs, switch, runtime_switch))
                save()


if __name__ == "__main__":
    main()
