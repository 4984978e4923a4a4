"""Where the p99 of many real-time streams goes: a per-batch timeline of the engine thread, the interpreter's
wake-up delays, and each thread's CPU time, during one `plan`-style verification run.

100 x 720p30 streams keep p50 at ~15 ms while p99 swings between 26 and 120 ms from machine to machine,
and the tail is frames waiting in their queues for the engine thread. This run records, without changing the
runtime (its methods are wrapped here):
- per batch: when the engine thread asked for it, got it, had it submitted, started and finished collecting, its
  size, and the longest queue wait in it;
- a probe thread that sleeps 1 ms in a loop: how late it wakes (GIL hand-over and CPU scheduling delay);
- each thread's CPU seconds in this process (/proc/self/task), the decoder processes' CPU, and the machine's.
Then: what the engine thread was doing while the slowest batches waited. POLICIES=turns,oldest runs the scheduler's
earlier policy (one frame per stream in turn, the turn moving one stream per batch) and the current one (oldest
frames first) alternately, REPEATS times each, in this one process; LOCKED=driver,lookup likewise alternates how the
engine thread tells a registered ring's frames (a driver query per frame, as before, or a lookup), and NICE=0,5 the
decoder processes' added niceness, UPLOAD=loop,all how ring frames are DMA'd (a call each or one call), and
SWITCH=5,1 the thread switch interval (ms), CORES=0,2 the cores kept free of decoder processes
(RunOptions.runtime_cores), MAXBATCH=32,64 the scheduler's largest batch (the detector captures graphs up to the
largest; a batch of 30 still runs in the graph of 32, so a larger cap only acts on a backlog). Environment: STREAMS (100), SECONDS (15),
BATCH (32), MODEL (default), COMPILE (none), ENGINES (graph,compiled: both, alternated), DECODER_PROCS. Writes serve_stalls.json under $OUT.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment  # noqa: E402

from yolotune import Detector  # noqa: E402
from yolotune.pipeline import detector as detector_module  # noqa: E402
from yolotune.pipeline.buffers import host_tensor  # noqa: E402
from yolotune.pipeline.detector import Detector as _Det  # noqa: E402
from yolotune.serve.decoders import DecoderPool, decoder_cpus  # noqa: E402
from yolotune.serve.plan import _clip, _verify  # noqa: E402
from yolotune.serve.runtime import RunOptions  # noqa: E402
from yolotune.serve.scheduler import BatchScheduler  # noqa: E402

STREAMS = int(os.environ.get("STREAMS", "100"))
SECONDS = float(os.environ.get("SECONDS", "15"))
BATCH = int(os.environ.get("BATCH", "32"))
MAX_BATCHES = [int(v) for v in os.environ.get("MAXBATCH", str(BATCH)).split(",")]
DECODER_PROCS = int(os.environ["DECODER_PROCS"]) if os.environ.get("DECODER_PROCS") else None

batches: list[dict] = []
wakeups: list[tuple[float, float]] = []  # (time, how late in ms)
_current: dict = {}


def instrument() -> None:
    """Wrap the scheduler's next_batch and the detector's submit_frames / collect with timestamps."""
    next_batch, submit, collect = BatchScheduler.next_batch, _Det.submit_frames, _Det.collect

    def timed_next(self, stop, block=True):
        t0 = time.perf_counter()
        frames = next_batch(self, stop, block)
        t1 = time.perf_counter()
        if frames:
            waits = [f.batched_at - f.queued_at for f in frames if f.queued_at]
            _current.clear()
            _current.update(asked=t0, got=t1, size=len(frames), blocked=block,
                            max_queue_ms=1e3 * max(waits) if waits else None,
                            max_handover_ms=1e3 * max(f.queued_at - f.decoded_at for f in frames if f.queued_at) if waits else None)
        return frames

    def timed_submit(self, frames, slot):
        b = submit(self, frames, slot)
        row = dict(_current, submitted=time.perf_counter())
        b._diag = row
        return b

    def timed_collect(self, batch, release=None):
        t0 = time.perf_counter()
        out = collect(self, batch, release) if release is not None else collect(self, batch)
        row = getattr(batch, "_diag", None)
        if row is not None:
            row.update(collect_start=t0, collected=time.perf_counter())
            batches.append(row)
            batch._diag = None
        return out

    BatchScheduler.next_batch, _Det.submit_frames, _Det.collect = timed_next, timed_submit, timed_collect


def take_in_turns(self) -> list:
    """The scheduler's first policy, for the A/B: one frame per stream in turn from a pointer that moves one stream
    per batch."""
    batch: list = []
    n = len(self.queues)
    while len(batch) < self.max_batch:
        took = False
        for k in range(n):
            q = self.queues[(self._turn + k) % n]
            if len(q) and len(batch) < self.max_batch:
                batch.append(q.pop())
                took = True
        if not took:
            break
    self._turn = (self._turn + 1) % max(n, 1)
    return batch


collections: list[tuple[float, int, float]] = []  # (start, generation, ms): the garbage collector's pauses
stalls: list[dict] = []  # where every thread was when the probe woke more than 30 ms late (first 12)
_gc_started: list[float] = [0.0]


_gen2_seen: list[dict] = []  # per full collection: objects walked, by kind


def on_gc(phase: str, info: dict) -> None:
    gen = info.get("generation", -1)
    if phase == "start":
        if gen == 2:  # rare, and the ones that hurt: what a full collection walks (counted before its clock starts)
            objs = gc.get_objects(generation=2)
            kinds: dict[str, int] = {}
            for o in objs:
                kinds[type(o).__name__] = kinds.get(type(o).__name__, 0) + 1
            _gen2_seen.append({"objects": len(objs), "frozen": gc.get_freeze_count(),
                               "kinds": sorted(kinds.items(), key=lambda kv: -kv[1])[:12]})
            del objs
        _gc_started[0] = time.perf_counter()
    else:
        collections.append((_gc_started[0], gen, (time.perf_counter() - _gc_started[0]) * 1e3))
        if gen == 2 and _gen2_seen:
            _gen2_seen[-1].update(ms=round(collections[-1][2], 2), collected=info.get("collected"))


def where_threads_are() -> dict[str, list[str]]:
    names = {t.ident: t.name for t in threading.enumerate()}
    out = {}
    for ident, frame in sys._current_frames().items():
        stack = []
        while frame is not None and len(stack) < 5:
            stack.append(f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno} {frame.f_code.co_name}")
            frame = frame.f_back
        out[names.get(ident, str(ident))] = stack
    return out


def probe(stop: threading.Event) -> None:
    while not stop.is_set():
        t0 = time.perf_counter()
        time.sleep(0.001)
        late = (time.perf_counter() - t0 - 0.001) * 1e3
        wakeups.append((t0, late))
        if late > 30 and len(stalls) < 12:
            stalls.append({"at": t0, "late_ms": round(late, 1), "threads": where_threads_are()})


class CpuSampler:
    """Every second: CPU seconds of each thread of this process (by name) and of each child process; threads and
    decoder processes end with the run, so each is counted from its first to its last sample."""

    def __init__(self):
        self.threads: dict[int, list] = {}  # tid -> [name, first, last]
        self.children: dict[int, list] = {}  # pid -> [first, last]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="cpu-sampler", daemon=True)

    def _loop(self) -> None:
        import psutil

        tick = os.sysconf("SC_CLK_TCK")
        while True:
            names = {t.native_id: t.name for t in threading.enumerate()}
            for task in Path("/proc/self/task").iterdir():
                try:
                    fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                    comm = (task / "comm").read_text().strip()
                except OSError:
                    continue
                tid, cpu = int(task.name), (int(fields[11]) + int(fields[12])) / tick
                row = self.threads.setdefault(tid, [names.get(tid, f"native:{comm}"), cpu, cpu])
                row[2] = cpu
                if tid in names:
                    row[0] = names[tid]
            for c in psutil.Process().children(recursive=True):
                try:
                    t = c.cpu_times()
                except psutil.Error:
                    continue
                self.children.setdefault(c.pid, [t.user + t.system, 0.0])[1] = t.user + t.system
            if self.stop.wait(1.0):
                return

    def start(self) -> None:
        self.thread.start()

    def finish(self) -> dict:
        self.stop.set()
        self.thread.join()
        by_name: dict[str, float] = {}
        for name, first, last in self.threads.values():
            by_name[name] = by_name.get(name, 0.0) + last - first
        return {"threads": {k: round(v, 2) for k, v in sorted(by_name.items(), key=lambda kv: -kv[1]) if v > 0.05},
                "children_total_s": round(sum(max(0.0, b - a) for a, b in self.children.values()), 1),
                "children": len(self.children)}


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all cores."""
    v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def cgroup_cpu() -> dict:
    """This container's CPU limit and throttling counters (cgroup v2, else v1): a quota exceeded inside one period
    stops every process of the group until the next, which would look like a process-wide stall."""
    out: dict = {}
    for stat, limit in (("/sys/fs/cgroup/cpu.stat", "/sys/fs/cgroup/cpu.max"),
                        ("/sys/fs/cgroup/cpu/cpu.stat", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us")):
        try:
            out.update(line.split() for line in Path(stat).read_text().splitlines() if line.strip())
            out["limit"] = Path(limit).read_text().strip()
            return out
        except OSError:
            continue
    return out


def analyse(rows: list[dict], t_start: float) -> dict:
    if not rows:
        return {}
    rows = sorted(rows, key=lambda r: r["got"])
    q = np.array([r["max_queue_ms"] or 0 for r in rows])
    gap = np.diff([r["got"] for r in rows]) * 1e3  # time between batches leaving the scheduler
    submit = np.array([(r["submitted"] - r["got"]) * 1e3 for r in rows])
    collect = np.array([(r["collected"] - r["collect_start"]) * 1e3 for r in rows])
    in_flight = np.array([(r["collect_start"] - r["submitted"]) * 1e3 for r in rows])
    pct = lambda a: {p: round(float(np.percentile(a, p)), 2) for p in (50, 90, 99)} | {"max": round(float(a.max()), 2)}  # noqa: E731
    worst = np.argsort(q)[-10:][::-1]
    late = np.array([w for _, w in wakeups]) if wakeups else np.zeros(1)
    detail = []
    for i in worst:
        r = rows[i]
        lo, hi = r["got"] - r["max_queue_ms"] / 1e3, r["got"]
        prev = rows[i - 1] if i else None
        probe_in = [w for t, w in wakeups if lo <= t <= hi]
        detail.append({
            "at_s": round(r["got"] - t_start, 3), "size": r["size"], "max_queue_ms": round(r["max_queue_ms"], 1),
            "max_handover_ms": round(r["max_handover_ms"] or 0, 1),
            "gap_before_ms": round((r["got"] - prev["got"]) * 1e3, 1) if prev else None,
            "prev_submit_ms": round((prev["submitted"] - prev["got"]) * 1e3, 1) if prev else None,
            "prev_collect_ms": round((prev["collected"] - prev["collect_start"]) * 1e3, 1) if prev else None,
            "asked_to_got_ms": round((r["got"] - r["asked"]) * 1e3, 1), "blocked": r["blocked"],
            "probe_worst_late_ms": round(max(probe_in), 1) if probe_in else None,
        })
    return {
        "batches": len(rows), "mean_size": round(float(np.mean([r["size"] for r in rows])), 1),
        "max_queue_ms": pct(q), "gap_between_batches_ms": pct(gap), "submit_ms": pct(submit),
        "in_flight_ms": pct(in_flight), "collect_ms": pct(collect),
        "probe_late_ms": pct(late), "probe_late_over_20ms": int((late > 20).sum()), "probe_samples": len(late),
        "worst_batches": detail,
    }


def main() -> None:
    out = Path(os.environ.get("OUT") or tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    w, h = (int(v) for v in os.environ.get("RES", "1280x720").split("x"))
    clip = _clip(Path(tempfile.mkdtemp(prefix="serve-stalls-")), w, h, 30)
    # ENGINES=graph,compiled: a CUDA-graph detector and a compiled one (inductor-untuned, as optimize's default
    # picks), both built up front and alternated run by run; else the one COMPILE says
    kinds = {"graph": {}, "compiled": {"compile": "inductor-untuned"}}
    if os.environ.get("COMPILE", "none") != "none":
        kinds["compile=" + os.environ["COMPILE"]] = {"compile": os.environ["COMPILE"]}
    names = os.environ.get("ENGINES", "graph" if os.environ.get("COMPILE", "none") == "none"
                           else "compile=" + os.environ["COMPILE"]).split(",")
    result: dict = {"env": environment(), "streams": STREAMS, "seconds": SECONDS, "batch": BATCH, "runs": []}
    instrument()
    gc.callbacks.append(on_gc)
    with contextlib.ExitStack() as stack:
        detectors = {}
        for name in names:
            t_build = time.perf_counter()
            detectors[name] = stack.enter_context(Detector(os.environ.get("MODEL", "default"), device="auto",
                                                           batch=max(BATCH, *MAX_BATCHES), **kinds[name]))
            _verify(detectors[name], clip, 8, 30, 3, 4, None, BATCH, 50, decoder_processes=DECODER_PROCS)  # warm-up
            result.setdefault("engines_ready_s", {})[name] = round(time.perf_counter() - t_build, 1)
        oldest = BatchScheduler._take
        policies = os.environ.get("POLICIES", "oldest").split(",")
        # LOCKED=driver,lookup: how the engine thread learns that a frame is in a registered ring: by asking the
        # driver per frame (Tensor.is_pinned, as before) or from the ranges register_host_memory recorded (now)
        looked_up = detector_module.is_page_locked
        asked = lambda f: host_tensor(f).is_pinned() if isinstance(f, np.ndarray) else f.is_pinned()  # noqa: E731
        lookups = os.environ.get("LOCKED", "lookup").split(",")
        # NICE=0,5: the decoder processes' added niceness (DecoderOptions.nice), alternated the same way
        nices = [int(v) for v in os.environ.get("NICE", "5").split(",")]
        # UPLOAD=loop,all: a registered ring's frames DMA'd by one copy_ call each (as before) or all in one call;
        # SWITCH=5,1: the interpreter's thread switch interval in ms during the run (5 is Python's default)
        uploads = os.environ.get("UPLOAD", "all").split(",")
        switches = [float(v) for v in os.environ.get("SWITCH", "5").split(",")]
        cores = [int(v) for v in os.environ.get("CORES", str(RunOptions().runtime_cores)).split(",")]
        one_call = detector_module.copy_all

        def one_by_one(dsts, srcs):
            for d, s in zip(dsts, srcs):
                d.copy_(s, non_blocking=True)

        pool_init = DecoderPool.__init__
        trials = [(p, k, n, u, sw, c, mb, e) for _ in range(int(os.environ.get("REPEATS", "2"))) for p in policies
                  for k in lookups for n in nices for u in uploads for sw in switches for c in cores for mb in MAX_BATCHES
                  for e in names]
        for policy, locked, nice, upload, switch, reserve, max_batch, engine in trials:
            det = detectors[engine]
            detector_module.copy_all = one_by_one if upload == "loop" else one_call
            sys.setswitchinterval(switch / 1000)
            BatchScheduler._take = take_in_turns if policy == "turns" else oldest
            detector_module.is_page_locked = asked if locked == "driver" else looked_up

            def niced_pool(self, specs, queues, stop, opt, *a, _nice=nice, _reserve=reserve, **k):
                opt.nice, opt.cpus = _nice, decoder_cpus(_reserve)
                pool_init(self, specs, queues, stop, opt, *a, **k)

            DecoderPool.__init__ = niced_pool
            batches.clear()
            _gen2_seen.clear()
            wakeups.clear()
            collections.clear()
            stalls.clear()
            stop = threading.Event()
            th = threading.Thread(target=probe, args=(stop,), name="probe", daemon=True)
            sampler = CpuSampler()
            frozen_before = gc.get_freeze_count()  # the runtime freezes start-up objects for its run
            m0, t0, cg0 = machine_cpu(), time.perf_counter(), cgroup_cpu()
            sampler.start()
            th.start()
            row = _verify(det, clip, STREAMS, 30, SECONDS, 4, None, max_batch, 50, decoder_processes=DECODER_PROCS)
            stop.set()
            th.join()
            m1, wall, cg1 = machine_cpu(), time.perf_counter() - t0, cgroup_cpu()
            throttling = {k: int(cg1[k]) - int(cg0.get(k, 0)) for k in cg1 if "throttl" in k and cg1[k].isdigit()}
            gcs = [(round(t - t0, 3), g, round(ms, 2)) for t, g, ms in collections]
            run = {"policy": policy, "page_locked_by": locked, "decoder_nice": nice, "upload": upload,
                   "switch_interval_ms": switch, "runtime_cores": reserve, "decoder_cpus": decoder_cpus(reserve),
                   "max_batch": max_batch, "engine": engine, "verify": row, "wall_s": round(wall, 1), "analysis": analyse(list(batches), t0),
                   "gc": {"count": len(gcs), "total_ms": round(sum(ms for *_, ms in gcs), 1),
                          "longest": sorted(gcs, key=lambda c: -c[2])[:8], "full": list(_gen2_seen),
                          "frozen_before": frozen_before},
                   "stalls": [dict(st, at=round(st["at"] - t0, 3)) for st in stalls],
                   "cpu_s": sampler.finish(), "machine_busy": round((m1[0] - m0[0]) / max(1, m1[1] - m0[1]), 3),
                   "cgroup": {"limit": cg1.get("limit"), **throttling}}
            result["runs"].append(run)
            print(json.dumps(run, default=str)[:6000], flush=True)
            (out / "serve_stalls.json").write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
