"""What NVDEC decodes of one stream's kind, measured: frames/s with several sessions at once and the device memory a
session holds. ``plan`` counts it as the NVDEC limit beside compute, memory and host decoding; ``run`` (decode
"auto") takes that many streams of a file source's kind onto NVDEC and decodes the rest on the CPU.

The measurement runs the run's own decode path (PyAV demux, Annex B, NVDEC, the frame copied into its own tensor)
in threads of this process, so a host-side limit of that path shows in the figure too.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field

from yolotune.io import nvdec
from yolotune.io.video import FrameGap, VideoReader


@dataclass
class NvdecCapacity:
    frames_per_s: float  # all sessions together
    sessions: int
    engines: int
    codec: str
    size: tuple[int, int]  # (height, width)
    device_bytes_per_session: int | None  # decoder surfaces and our frame copies, from the driver's free memory
    seconds: float
    errors: list[str] = field(default_factory=list)

    @property
    def per_engine(self) -> float:
        return self.frames_per_s / max(1, self.engines)

    def to_dict(self) -> dict:
        return {**asdict(self), "per_engine": round(self.per_engine, 1)}


def measure_nvdec(clip: str, device, sessions: int | None = None, seconds: float = 2.0) -> NvdecCapacity:
    """Decode looped copies of ``clip`` on ``sessions`` NVDEC sessions at once (default: two per engine) for about
    ``seconds``; NvdecUnavailable when NVDEC cannot take it."""
    import torch

    device = torch.device(device)
    gpu = device.index if device.index is not None else torch.cuda.current_device()
    engines = nvdec.engines(gpu)
    sessions = sessions or max(2, 2 * engines)
    probe = VideoReader(clip, decoder=nvdec.nvdec_factory(device))  # raises nothing: falls back, says why
    codec, size, why = probe.stream.codec_context.name, (probe.stream.height, probe.stream.width), probe.fallback
    probe.close()
    if why:
        raise nvdec.NvdecUnavailable(why)
    torch.cuda.synchronize(device)
    free_before = torch.cuda.mem_get_info(device)[0]
    counts = [0] * sessions
    errors: list[str] = []
    opened = threading.Barrier(sessions + 1)
    stop = threading.Event()
    held: list = []

    def session(k: int) -> None:
        ready = False
        try:
            while not stop.is_set():
                with VideoReader(clip, decoder=nvdec.nvdec_factory(device)) as reader:
                    for item in reader.frames(stop=stop):
                        if not ready:
                            held.append(item)  # one frame per session kept while memory is read
                            ready = True
                            opened.wait()
                        if not isinstance(item, FrameGap):
                            counts[k] += 1
        except threading.BrokenBarrierError:
            pass
        except Exception as e:  # noqa: BLE001  (reported: a limit of 0 says why)
            errors.append(f"{type(e).__name__}: {e}")
        finally:
            if not ready:
                opened.abort()

    threads = [threading.Thread(target=session, args=(k,), name=f"yolotune-nvdec-probe-{k}", daemon=True)
               for k in range(sessions)]
    for t in threads:
        t.start()
    per_session = None
    try:
        opened.wait(timeout=30)
        per_session = max(0, free_before - torch.cuda.mem_get_info(device)[0]) // sessions
    except threading.BrokenBarrierError:
        pass
    start_counts, t0 = sum(counts), time.perf_counter()
    time.sleep(seconds)
    done, dt = sum(counts) - start_counts, time.perf_counter() - t0
    stop.set()
    for t in threads:
        t.join(timeout=10)
    held.clear()
    return NvdecCapacity(done / dt, sessions, engines, codec, size, per_session, dt, sorted(set(errors)))
