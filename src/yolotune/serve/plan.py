"""``yolotune plan``: how many streams of a given resolution and frame rate fit, and a run that checks it.

Three resources can bind, each measured here rather than assumed:
- device compute: frames/s of the whole detect step (upload, letterbox, model, NMS, copy back) at the best batch;
- memory: per-stream bytes against 80% of the device's memory (the usual rule of thumb: 20% reserve) and of the
  host's (a stream's queue of decoded frames and its decoder live on the host; an NVDEC stream's decoder surfaces
  and frame ring on the device);
- decode: frames/s the CPU decoders deliver at this resolution, plus, where the GPU has NVDEC (io/nvdec.py), what
  the NVDEC decoder processes deliver; streams beyond NVDEC's share are decoded on the CPU at the same time.
The prediction is the smallest of the three; ``verify`` then runs that many looped, real-time file streams through
``StreamRuntime`` and reports what held: per-stream FPS, drops, lag behind real time, p50/p99 latency, memory.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from yolotune.interpreter import usable_cores
from yolotune.io.nvdec import NvdecUnavailable, video_decoder_for
from yolotune.io.stream_specs import SourceSpec
from yolotune.pipeline.buffers import register_host_memory
from yolotune.profile.sweep import knee as knee_of
from yolotune.serve.decoders import decoder_processes, frame_nbytes
from yolotune.serve.plan_report import PlanReport
from yolotune.serve.choices import decoder_mode, ring_pinner
from yolotune.serve.decode_routing import nvdec_stream_limit
from yolotune.serve.nvdec_capacity import measure_nvdec
from yolotune.serve.runtime import RunOptions, StreamRuntime
from yolotune.types import Detections, InputRef

MAX_TRIALS = 6  # verification runs before plan gives up (each runs its streams for verify_seconds)
RESERVE = 0.2
MIN_SIDE, MAX_SIDE = 32, 8192  # the stream sizes plan encodes a test clip at (H.264, 4:2:0: even sides)


def planning_detector(model: str, device: str = "auto", batch: int | None = None, **options):
    """The Detector ``plan`` measures: at ``batch``, else an artifact's own batch, else the largest batch its sweep
    tries (64 on a GPU, 8 on a CPU)."""
    from yolotune.pipeline.detector import Detector, resolve_device

    if batch is None and not Path(model, "yolotune.json").is_file():
        batch = 64 if resolve_device(device).type == "cuda" else 8
    return Detector(model, device=device, **({"batch": batch} if batch else {}), **options)


def resolution_problem(width, height) -> str | None:
    """Why (width, height) is not a stream size plan can measure, or None."""
    ok = all(isinstance(v, int) and MIN_SIDE <= v <= MAX_SIDE and v % 2 == 0 for v in (width, height))
    return None if ok else (f"resolution must be WIDTHxHEIGHT with even sides from {MIN_SIDE} to {MAX_SIDE} "
                            f"(a camera's frame size), not {width}x{height}")


def recording_stream(path: str | Path) -> tuple[int, int, float]:
    """A recording's (width, height, frames/s), for plan to measure and verify with as every stream; ValueError
    saying why it cannot be (not a video, no decodable frame, no frame rate)."""
    import av

    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise ValueError(f"cannot plan with {path}: it has no video stream")
            s = c.streams.video[0]
            rate = s.average_rate or s.guessed_rate or s.base_rate
            frame = next(c.decode(s), None)
    except (av.error.FFmpegError, OSError) as e:
        raise ValueError(f"cannot plan with {path}: {e}") from e
    if frame is None:
        raise ValueError(f"cannot plan with {path}: no frame decodes")
    if not rate:
        raise ValueError(f"cannot plan with {path}: it does not say its frame rate")
    return frame.width, frame.height, float(rate)


def recording_problem(clip: str | Path, fps: float, resolution: tuple[int, int]) -> str | None:
    """Why ``clip`` cannot be every stream of a plan at ``fps`` and ``resolution`` (width, height); None: it can."""
    try:
        w, h, rate = recording_stream(clip)
    except ValueError as e:
        return str(e)
    if (w, h) != tuple(resolution):
        return f"{clip} is {w}x{h}, not {resolution[0]}x{resolution[1]}"
    if abs(rate - fps) > 0.01 * fps:  # its streams run at the recording's own rate
        return f"{clip} runs at {rate:g} FPS, not {fps:g}"
    return None


def plan(detector, fps: float, resolution: tuple[int, int], gpus: int = 1, verify: bool = True,
         verify_seconds: float = 20.0, queue_size: int = 4, max_wait_ms: float | None = None,
         latency_budget_ms: float | None = None, max_streams: int | None = None, progress=None,
         clip: str | Path | None = None) -> PlanReport:
    """``resolution`` is (width, height). Returns the plan: measurements, per-resource limits, prediction, and
    (with ``verify``) the verified stream count with its measurements. ``clip``: a recording from one of the
    cameras to measure and verify with (of this resolution and frame rate); None: a generated camera-like one."""
    width, height = resolution
    problem = resolution_problem(width, height)
    if problem:
        raise ValueError(problem)
    problem = recording_problem(clip, fps, resolution) if clip is not None else None
    if problem:
        raise ValueError(problem)
    with tempfile.TemporaryDirectory(prefix="yolotune-plan-") as work:  # removed on every way out
        return _plan(detector, fps, width, height, Path(work), gpus, verify, verify_seconds, queue_size, max_wait_ms,
                     latency_budget_ms, max_streams, progress or (lambda _m: None), clip)


def _plan(detector, fps: float, width: int, height: int, work: Path, gpus: int, verify: bool, verify_seconds: float,
          queue_size: int, max_wait_ms: float | None, latency_budget_ms: float | None, max_streams: int | None,
          say, recording: str | Path | None = None) -> PlanReport:
    dev = detector.device
    say("measuring the detect step at each batch size")
    decoders = decoder_mode("auto", detector, 2)  # what the runtime uses for many streams
    sweep = _detect_sweep(detector, height, width, page_locked=decoders == "processes" and ring_pinner(detector) is not None)
    best = max(sweep, key=lambda r: r["frames_per_s"])
    knee = knee_of(sweep, rate=lambda r: r["frames_per_s"])
    # With a latency budget, run at the knee (profile/sweep.py's rule): a larger batch buys no throughput, and the
    # next batch waits behind it.
    chosen = knee if latency_budget_ms is not None else best
    say("measuring decode speed and per-stream memory")
    clip = Path(recording) if recording is not None else plan_clip(work, width, height, fps)
    pixel_format = "yuv420p" if dev.type == "cuda" and width % 2 == 0 and height % 2 == 0 else "rgb24"
    decode_fps = _decode_fps_one_core(clip, pixel_format)
    cores = usable_cores()
    # decoder processes leave two cores to the engine and the sinks
    decode_cores = decoder_processes(10**6, cores) if decoders == "processes" else cores
    nvdec = _nvdec_side(detector, clip, decoders, fps, say)
    say("measuring the host side alone: decoding and handing frames over, many streams at once")
    host_fps, host_errors = _host_pipeline_fps(clip, decoders, pixel_format, min(64, 2 * decode_cores),
                                               video_decode="cpu")
    # frames a stream holds on the host: its queue, or in decoder processes its ring (4 x queue_size slots), of
    # I420 on a GPU or RGB
    frames_held = 4 * queue_size if decoders == "processes" else queue_size
    host_per_stream = frames_held * frame_nbytes((height, width), pixel_format) + _decoder_host_bytes(clip)
    device_per_frame = knee["memory_bytes_per_frame"]
    # a stream holds at most ~2 frames on the device: one in the batch being computed, one being uploaded
    device_per_stream = 2 * device_per_frame if device_per_frame else None
    if nvdec and device_per_stream is not None:  # NVDEC streams also hold their decoder's surfaces and frame ring
        device_per_stream += nvdec["device_bytes_per_stream"]
    total_device, total_host = _device_memory(dev), _host_memory()
    limits = {
        "compute": gpus * chosen["frames_per_s"] / fps,
        # what the decoders and the runtime deliver together, not one core's rate times the cores, which promised
        # twice what was delivered (serve/plan_h100_latency50.json); with no stream delivering in that run, the
        # latter, and a note says so; NVDEC's streams beside them
        "decode": ((host_fps or decode_fps * decode_cores) + (nvdec["frames_per_s"] if nvdec else 0.0)) / fps,
        "host_memory": (1 - RESERVE) * total_host / host_per_stream,
    }
    if device_per_stream and total_device:
        limits["device_memory"] = gpus * (1 - RESERVE) * total_device / device_per_stream
    binding = min(limits, key=limits.get)
    predicted = max(0, int(limits[binding]))
    if max_streams is not None:
        predicted = min(predicted, max_streams)
    report = PlanReport(
        device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU", gpus=gpus, fps=fps,
        resolution=[width, height], reserve=RESERVE, cpu_cores=cores, sweep=sweep, best_batch=best["batch"],
        knee_batch=knee["batch"], batch=chosen["batch"], frames_per_s=chosen["frames_per_s"],
        decode_fps_per_core=decode_fps, decode_cores=decode_cores, host_pipeline_fps=host_fps,
        host_pipeline_errors=host_errors, host_bytes_per_stream=host_per_stream,
        device_bytes_per_stream=device_per_stream, total_host_bytes=total_host, total_device_bytes=total_device,
        limits={k: round(v, 1) for k, v in limits.items()}, binding=binding, predicted_streams=predicted,
        latency_budget_ms=latency_budget_ms, nvdec=nvdec,
        clip=str(recording) if recording is not None else "generated, camera-like")
    if predicted == 0:
        report.one_stream = one_stream_fit(limits, fps, chosen["frames_per_s"], host_fps or decode_fps * decode_cores)
    if not host_fps:
        report.notes.append("the host-side run delivered no frames; the decode limit is one core's "
                                              "rate times the decoder cores")
    if verify and predicted > 0:
        if gpus > 1:
            report.notes.append(f"verified on this machine's one device with {predicted // gpus} "
                                                  "streams (the per-GPU share)")
        per_device = max(1, predicted // gpus)
        nvdec_streams = nvdec["streams"] if nvdec else None
        report.verification = step_down(per_device, lambda n: _verify(
            detector, clip, n, fps, verify_seconds, queue_size, max_wait_ms, chosen["batch"], latency_budget_ms,
            nvdec_streams=nvdec_streams), fps, latency_budget_ms, verify_seconds, say)
        held = [r["streams"] for r in report.verification if r["holds"]]
        report.verified_streams = (max(held) * gpus) if held else 0
    return report


def step_down(n: int, trial, fps: float, latency_budget_ms: float | None, seconds: float, say) -> list[dict]:
    """Verification runs (``trial(streams) -> row``) from ``n`` streams down (next_trial) until one holds, at most
    MAX_TRIALS."""
    rows: list[dict] = []
    for _ in range(MAX_TRIALS):
        say(f"verifying {n} streams for {seconds:.0f} s")
        rows.append(trial(n))
        if rows[-1]["holds"]:
            break
        n = next_trial(rows[-1], fps, latency_budget_ms)
        if n == rows[-1]["streams"]:
            break
    return rows


def batch_wait_ms(max_wait_ms: float | None, latency_budget_ms: float | None, fps: float) -> float:
    """How long a verification run's batch waits to fill: as asked, else a quarter of the latency budget or one
    frame interval, whichever is shorter."""
    return max_wait_ms if max_wait_ms is not None else min((latency_budget_ms or 1e9) / 4, 1e3 / fps)


def one_stream_fit(limits: dict, fps: float, compute_fps: float, decode_fps: float) -> dict:
    """Where no stream of ``fps`` fits: the frame rate at which one does, and what bounds it (a stream runs on one
    device; memory does not depend on the frame rate, so a memory limit below one stream fits none at any rate)."""
    short = [k for k in limits if k.endswith("memory") and limits[k] < 1]
    if short:
        return {"fps": None, "bound_by": min(short, key=limits.get)}
    rates = {"compute": compute_fps, "decode": decode_fps}
    bound = min(rates, key=rates.get)
    return {"fps": round(rates[bound], 2), "bound_by": bound}


def next_trial(row: dict, fps: float, latency_budget_ms: float | None) -> int:
    """Streams to try after a verification run ``row`` that did not hold.

    Streams falling behind: what the run delivered in all (total frames/s over the stream rate), 5% under, and at
    least 15% fewer. Only the p99 over budget: 15% fewer, 30% when p99 was over twice the budget (steps of 15% alone
    ran out of tries: benchmarks/results/serve/plan_h100_latency12_step_down.json)."""
    n = row["streams"]
    nxt = int(n * 0.85)
    behind = row["max_lag_s"] >= 1.0 or row["dropped"] or row["min_stream_fps"] < 0.8 * fps
    if behind and row.get("total_fps"):
        nxt = min(nxt, int(0.95 * row["total_fps"] / fps))
    elif latency_budget_ms and (row.get("latency_p99_ms") or 0) > 2 * latency_budget_ms:
        nxt = int(n * 0.7)
    return max(1, min(n - 1, nxt))


def _detect_sweep(detector, height: int, width: int, page_locked: bool = False) -> list[dict]:
    """Frames/s of ``detector.detect`` on same-size frames at batch 1, 2, 4, ... up to its batch size.

    The frames are what the runtime hands over: I420 planes on a GPU (pixel format "auto"), RGB on a CPU; with
    ``page_locked``, in page-locked memory like the decoder processes' registered rings."""
    rng = np.random.default_rng(0)
    cuda = detector.device.type == "cuda"
    i420 = cuda and width % 2 == 0 and height % 2 == 0
    shape = (height * 3 // 2, width) if i420 else (height, width, 3)
    frame = rng.integers(0, 255, shape, dtype=np.uint8)
    with contextlib.ExitStack() as stack:
        if page_locked:
            frame = stack.enter_context(_registered_like_a_ring(frame, detector.device))
        return _sweep_batches(detector, frame, cuda)


@contextlib.contextmanager
def _registered_like_a_ring(frame: np.ndarray, device):
    """A copy of ``frame`` page-locked the way the decoder processes' rings are (register_host_memory), so the
    sweep's uploads take the runtime's path: a DMA straight from the frame. A view of torch-pinned memory would
    not: the detector tells page-locked frames by the registered ranges and uploads the rest through staging, and the
    sweep would say less than the runtime serves (serve/plan_h100_latency50_registered_sweep.json). Registered from
    a thread of its own: a refusal stays that thread's CUDA error, not this one's."""
    buffer = np.empty(frame.nbytes, np.uint8)
    got: list = []
    t = threading.Thread(target=lambda: got.append(register_host_memory(buffer, device)), name="yolotune-plan-pin")
    t.start()
    t.join()
    copy = buffer.reshape(frame.shape)
    copy[...] = frame
    try:
        yield copy
    finally:
        if got and got[0] is not None:
            got[0]()


def _sweep_batches(detector, frame: np.ndarray, cuda: bool) -> list[dict]:
    rows = []
    b = 1
    while b <= detector.batch:
        frames = [frame] * b
        if cuda:
            torch.cuda.synchronize(detector.device)
            torch.cuda.reset_peak_memory_stats(detector.device)
            base = torch.cuda.memory_allocated(detector.device)
        detector.detect(frames)  # warm-up (graph capture for this bucket)
        n, t0 = 0, time.perf_counter()
        while n < 3 or time.perf_counter() - t0 < (0.3 if cuda else 1.0):
            detector.detect(frames)
            n += 1
        dt = (time.perf_counter() - t0) / n
        peak = (torch.cuda.max_memory_allocated(detector.device) - base) if cuda else None
        rows.append({"batch": b, "ms_per_batch": dt * 1e3, "frames_per_s": b / dt,
                     "memory_bytes_per_frame": (peak / b) if peak else None})
        b *= 2
    return rows


def plan_clip(work: Path, width: int, height: int, fps: float) -> Path:
    """The stream plan measures and verifies: encoded like a camera's (sensor noise, a keyframe a second, a camera's
    bitrate), as a generated clip would otherwise decode several times faster than a camera's stream does."""
    from yolotune.data.synth import write_video

    return write_video(work / f"plan_{width}x{height}.mp4", frames=max(30, int(fps * 4)), size=(height, width),
                       fps=max(1, round(fps)), seed=11, camera=True)


class _NoEngine:
    """Stands in for the model so that a run measures only the host side: decoders, handover, queues, scheduler.
    On ``device`` "cuda" it takes NVDEC's device frames (it looks like a detector preprocessing on the GPU)."""

    batch = 64

    def __init__(self, device: torch.device | None = None):
        self.device = device or torch.device("cpu")
        self.preprocess = "gpu" if self.device.type == "cuda" else "cpu"
        self.frames = SimpleNamespace(one_graph=False)

    def detect(self, frames):
        empty = np.zeros((0, 4), np.float32)
        return [Detections(InputRef("frame"), f.shape[:2], empty, empty[:, 0], np.zeros(0, np.int64)) for f in frames]


def _host_pipeline_fps(clip: Path, decoders: str, pixel_format: str, streams: int, seconds: float = 6.0,
                       video_decode: str = "cpu", device: torch.device | None = None) -> tuple[float, list[str]]:
    """Frames/s that ``streams`` looped copies of ``clip`` deliver through the runtime with a model that takes no
    time (after each stream's first frame): decoding, handover and scheduling together, in the runtime's decoder
    mode and pixel format (``video_decode`` "nvdec": on NVDEC, ``device``'s); and the distinct errors its streams
    reported (a decode limit of 0 says why)."""
    specs = [SourceSpec(str(clip), "file", f"h{i:03d}", loop=True) for i in range(streams)]
    s = StreamRuntime(_NoEngine(device), specs, RunOptions(out=None, max_batch=64, max_wait_ms=5, queue_size=4,
                                                           duration_s=seconds, pixel_format=pixel_format,
                                                           decoders=decoders, video_decode=video_decode)).run()
    errors = sorted({st.error for st in s.streams if st.error})
    if s.last_engine_error:
        errors.append(f"engine: {s.last_engine_error}")
    return float(sum(st.steady_fps for st in s.streams)), errors


def _nvdec_side(detector, clip: Path, decoders: str, fps: float, say) -> dict | None:
    """What NVDEC decodes of such streams through the runtime (its decoder processes, no model), its engines, the
    device memory a stream holds (decoder surfaces and frame ring), and the streams it so takes (None: no NVDEC
    here, or it cannot take this stream)."""
    device = detector.device if getattr(detector, "preprocess", "cpu") == "gpu" else None
    if video_decoder_for("auto", device) is None:
        return None
    say("measuring NVDEC: its sessions, then its decoder processes with many streams at once")
    try:
        cap = measure_nvdec(str(clip), device, seconds=1.0)
    except NvdecUnavailable:
        return None
    streams = 48 if decoders == "processes" else 8
    frames_per_s, errors = _host_pipeline_fps(clip, decoders, "yuv420p", streams, video_decode="nvdec", device=device)
    rows, width = cap.size[0] * 3 // 2, cap.size[1]
    ring = 2 * 4 * rows * width  # a device ring: 2 x queue_size (4 in plan's runs) NV12 frames
    return {"frames_per_s": round(frames_per_s, 1), "streams": nvdec_stream_limit(frames_per_s, fps) or 0,
            "engines": cap.engines, "sessions_one_process_fps": round(cap.frames_per_s, 1),
            "device_bytes_per_stream": (cap.device_bytes_per_session or 0) + ring, "errors": errors + cap.errors}


def _decode_fps_one_core(clip: Path, pixel_format: str = "rgb24") -> float:
    """Frames/s one decoder thread delivers in the runtime's pixel format (I420 skips the CPU's colour conversion:
    about twice as fast as RGB)."""
    import av

    with av.open(str(clip)) as c:
        s = c.streams.video[0]
        s.thread_type = "NONE"  # one core: the per-stream cost
        t0, n = time.perf_counter(), 0
        for f in c.decode(s):
            f.to_ndarray(format=pixel_format)
            n += 1
    return n / (time.perf_counter() - t0)


def _decoder_host_bytes(clip: Path) -> int:
    """Resident memory one open decoder adds (PyAV/FFmpeg buffers), measured with psutil."""
    import av
    import psutil

    proc = psutil.Process()
    before = proc.memory_info().rss
    containers = []
    for _ in range(4):
        c = av.open(str(clip))
        next(c.decode(video=0)).to_ndarray(format="rgb24")
        containers.append(c)
    after = proc.memory_info().rss
    for c in containers:
        c.close()
    return max(0, (after - before) // 4)


def _device_memory(dev: torch.device) -> int | None:
    if dev.type != "cuda":
        return None
    _, total = torch.cuda.mem_get_info(dev)
    return total


def _host_memory() -> int:
    import psutil

    return psutil.virtual_memory().total


def _verify(detector, clip: Path, n: int, fps: float, seconds: float, queue_size: int, max_wait_ms: float | None,
            batch: int, latency_budget_ms: float | None, pixel_format: str = "auto",
            decoder_processes: int | None = None, nvdec_streams: int | None = None) -> dict:
    """Run ``n`` looped real-time streams; holds when no stream falls behind its clock (lag under a second: a
    reader blocks when its queue is full, so a pipeline that cannot keep up shows as lag), nothing is dropped, and
    the p99 latency is within the budget if one is given."""
    # lossless: a run that cannot keep up shows as lag (a start-up hiccup within a second is no failure)
    specs = [SourceSpec(str(clip), "file", f"s{i:03d}", loop=True, realtime=True, lossless=True) for i in range(n)]
    wait = batch_wait_ms(max_wait_ms, latency_budget_ms, fps)
    opts = RunOptions(out=None, max_batch=batch, max_wait_ms=wait, queue_size=queue_size, duration_s=seconds,
                      pixel_format=pixel_format, decoder_processes=decoder_processes, nvdec_streams=nvdec_streams)
    if detector.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(detector.device)
    rt = StreamRuntime(detector, specs, opts)
    s = rt.run()
    row = verification_row(s, n, fps, seconds, latency_budget_ms)
    row["host_rss_growth_mib"] = (s.host_rss_mib or {}).get("growth_after_warmup")
    row["host_rss_mib"] = s.host_rss_mib
    row["device_peak_mib"] = (torch.cuda.max_memory_allocated(detector.device) / 2**20
                              if detector.device.type == "cuda" else None)
    return row


def verification_row(s, n: int, fps: float, seconds: float, latency_budget_ms: float | None) -> dict:
    """What a verification run (a RunSummary ``s`` of ``n`` looped real-time lossless streams of ``fps``) showed,
    and whether it holds: no stream fell behind its clock (lag under a second: a reader blocks when its queue is
    full, so a pipeline that cannot keep up shows as lag), nothing dropped or lost to the engine, every stream near
    its rate, the run its whole length, and the p99 latency within the budget if one is given."""
    warm = s.seconds
    rates = [st.steady_fps for st in s.streams]  # since each stream's first result: start-up excluded
    lags = [st.max_lag_s for st in s.streams]
    row = {
        "streams": n, "seconds": warm, "frames": s.frames, "total_fps": s.fps,
        "min_stream_fps": min(rates, default=0.0), "mean_stream_fps": float(np.mean(rates)) if rates else 0.0,
        "max_lag_s": max(lags, default=0.0), "dropped": s.dropped, "latency_p50_ms": s.latency_p50_ms,
        "latency_p99_ms": s.latency_p99_ms, "mean_batch": s.mean_batch, "pixel_format": s.pixel_format,
    }
    row["engine_errors"], row["stopped_by"] = s.engine_errors, s.stopped_by
    row["decoders"], row["engine_thread_s"], row["warmup_s"] = s.decoders, s.engine_thread_s, s.warmup_s
    row["latency_parts_ms"] = s.latency_parts_ms
    row["video_decode"] = s.video_decode
    if s.last_engine_error:
        row["last_engine_error"] = s.last_engine_error
    # It must also have run its time and kept every stream near its rate: a run that stopped early or processed
    # nothing shows no lag and no drops.
    row["holds"] = bool(rates and row["max_lag_s"] < 1.0 and row["dropped"] == 0 and s.engine_errors == 0
                        and s.stopped_by in (None, "duration") and warm >= 0.9 * seconds
                        and row["min_stream_fps"] >= 0.8 * fps
                        and (latency_budget_ms is None or (row["latency_p99_ms"] or 0) <= latency_budget_ms))
    return row
