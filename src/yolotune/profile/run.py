"""``profile()``: measure a detection pipeline stage by stage, find what limits it, and (optionally) verify the fixes.

Phases, each timed and marked in the trace: warm-up; the serialised stage run (repeated); a torch.profiler pass for
kernel launches; per-layer costs (eager) for the roofline and the diagram; the real overlapped pipeline end to end
(repeated); a batch sweep; and, with ``verify``, the recommended options run end to end.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from yolotune.io.nvdec import video_decoder_for
from yolotune.io.sources import VIDEO_SUFFIXES, expand_sources
from yolotune.options import DetectorOptions
from yolotune.profile import probes
from yolotune.profile.counters import NvmlSampler
from yolotune.profile.diagnose import diagnose
from yolotune.profile.end_to_end import e2e_inputs, measure_end_to_end
from yolotune.profile.kernels import profile_kernels
from yolotune.profile.result import ProfileReport
from yolotune.profile.roofline import RooflinePoint, device_peaks
from yolotune.profile.sections import SECTIONS, SectionRunner, detection_model, measure_layer_costs
from yolotune.profile.staged import STAGES, StagedPipeline
from yolotune.profile.sweep import knee, sweep_batches
from yolotune.profile.timeline import StageRecorder
from yolotune.profile.video import decode_probe

# What users typically run (decode with OpenCV/Pillow on the CPU, one image at a time, eager FP32, an NMS loop),
# and yolotune's own configuration. Both are plain Detector options, so a profile can be reproduced exactly.
PRESETS: dict[str, DetectorOptions] = {
    "plain": DetectorOptions(preprocess="cpu", gpu_decode=False, workers=1, cuda_graph=False, precision="fp32",
                             batch=1, nms="loop"),
    "optimized": DetectorOptions(batch=32),
}


def preset_options(pipeline: str, device_type: str, overrides: dict) -> DetectorOptions:
    """The preset, fitted to the device (a CPU runs its own precision, at most batch 8), with the overrides set."""
    if pipeline not in PRESETS:
        raise ValueError(f"pipeline must be one of {sorted(PRESETS)}, not {pipeline!r}")
    opts = PRESETS[pipeline]
    if device_type == "cpu":
        opts = opts.replace(precision=None, batch=min(opts.batch, 8))
    return opts.merged(overrides)


def image_paths(sources, limit: int | None, workdir: Path) -> list[str]:
    """Image files of ``sources`` (or generated 720p photos when none), cycled or cut to ``limit``; for a video
    source (and no images), the video's path once per frame profiled (``limit``, default 256)."""
    if not sources:
        from yolotune.data.samples import write_sample_images

        n = limit or 64
        return [str(p) for p in write_sample_images(workdir / "images", min(n, 64), size=(720, 1280), seed=0)] * max(1, -(-n // 64))
    expanded = expand_sources(sources).items
    items = [i for i in expanded if i.kind == "image"]
    videos = [i.path for i in expanded if i.kind == "video"]
    if not items and videos:
        return [videos[0]] * (limit or 256)
    if not items:
        raise ValueError("no image or video files in the sources (pass JPEG/PNG files, folders, or a video)")
    paths = [i.path for i in items]
    if limit:
        paths = (paths * (-(-limit // len(paths))))[:limit]
    return paths


def _stage_stats(spans, images_total: int) -> list[dict]:
    out = []
    for stage in STAGES:
        mine = [s for s in spans if s.stage == stage]
        if not mine:
            continue
        per_image = [s.wall_s * 1e3 / s.images for s in mine]
        total_ms = sum(s.wall_s for s in mine) * 1e3
        gpu = [s.gpu_s for s in mine if s.gpu_s is not None]
        n = sum(s.images for s in mine)
        out.append({
            "stage": stage,
            "ms_per_image": total_ms / n,
            "ms_per_image_std": statistics.pstdev(per_image) if len(per_image) > 1 else 0.0,
            "ms_per_image_p50": statistics.median(per_image),
            "gpu_ms_per_image": sum(gpu) * 1e3 / n if gpu else None,
            "host_enqueue_ms_per_image": sum(s.host_enqueued - s.host_start for s in mine) * 1e3 / n,
            "batches": len(mine),
            "samples": per_image,
            "sample_images": [s.images for s in mine],  # each sample's weight: ms/image is total time over images
        })
    total = sum(s["ms_per_image"] for s in out) or 1.0
    for s in out:
        s["share"] = s["ms_per_image"] / total
    return out


def _device_info(device: torch.device) -> dict:
    info = {"type": device.type, "torch": torch.__version__, "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, memory_gib=round(props.total_memory / 2**30, 1), sm_count=props.multi_processor_count,
                    capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda)
    else:
        info["name"] = f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
    return info


def profile(
    model: str,
    sources=None,
    pipeline: str = "optimized",
    device: str = "auto",
    images: int | None = None,
    repeats: int = 3,
    sweep: bool = True,
    max_batch: int | None = None,
    kernels: bool = True,
    verify: bool = False,
    workdir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
    **overrides,
) -> ProfileReport:
    """Profile ``model`` on ``sources`` with a pipeline preset ("plain" or "optimized") plus Detector overrides.

    Returns the ProfileReport: device, options, stages (ms/image with spread), kernels, layers, roofline, sweep,
    GPU counters, end-to-end throughput, findings (and verification); ``to_dict()`` is profile.json. Raises
    ValueError for bad options or inputs.
    """
    import tempfile

    from yolotune.pipeline.detector import Detector, resolve_device

    say = progress or (lambda _msg: None)
    dev = resolve_device(device)
    opts = preset_options(pipeline, dev.type, overrides)
    tmp = contextlib.ExitStack()
    work = Path(workdir) if workdir else Path(tmp.enter_context(tempfile.TemporaryDirectory(prefix="yolotune-profile-")))
    with tmp:
        paths = image_paths(sources, images, work)
        det = Detector(model, opts.replace(device=str(dev)))
        phases: list[dict] = []
        t_origin = time.perf_counter()

        @contextlib.contextmanager
        def phase(name: str):
            say(name)
            start = time.perf_counter()
            yield
            phases.append({"name": name, "start": start - t_origin, "end": time.perf_counter() - t_origin})

        sizes = [os.path.getsize(q) for q in set(paths)]
        video = paths[0] if is_video(paths[0]) else None
        result = ProfileReport(
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), model=str(model), pipeline=pipeline,
            device=_device_info(det.device),
            options={**opts.changed(), **det.describe(), "cuda_graph_active": det.uses_cuda_graph,
                     "decode_workers": det.decoder.workers},
            inputs={"images": len(paths), "files": len(sizes), "mean_bytes": sum(sizes) / max(1, len(sizes)),
                    **({"video": video, "video_decode": "nvdec" if det.video_decoder else "cpu"} if video else {})})
        staged = StagedPipeline(det)
        with NvmlSampler(det.device) as sampler, det:
            with phase("warm-up"):
                staged.run(paths[: det.batch * 2], StageRecorder(det.device))
            with phase("stages"):
                rec = StageRecorder(det.device)
                for r in range(repeats):
                    staged.run(paths, rec, first_batch=r * 10**6)
                spans = rec.finish()
            result.stages = _stage_stats(spans, len(paths) * repeats)
            result.serial_ms_per_image = sum(s["ms_per_image"] for s in result.stages)
            if kernels:
                with phase("kernels"):
                    few = paths[: det.batch * 2]
                    stats = profile_kernels(lambda: staged.run(few, StageRecorder(det.device, annotate=True)), det.device, len(few))
                result.kernels = {k: v.to_dict() for k, v in stats.items()}
                result.launches_per_image = sum(v.launches for v in stats.values())
            with phase("layers"):
                result.layers, result.roofline = _layers_and_roofline(det, result.stages, staged.last_input_shape)
            with phase("probes"):
                result.probes = _probes(det, staged, paths)
            with phase("end-to-end"):
                # warm-up: the pipeline's own graphs (a video's whole length: predict takes videos whole)
                warm = measure_end_to_end(det, paths[:1] if video else paths[: det.batch * 4], 1)
                e2e_paths = paths[:1] * max(1, int(warm["images_per_s"] * 1.5 / max(1, warm["images"]))) if video \
                    else e2e_inputs(paths, warm["images_per_s"])
                e2e_start = time.perf_counter()
                result.e2e = measure_end_to_end(det, e2e_paths, repeats)
                e2e_end = time.perf_counter()
            if sweep:
                with phase("sweep"):
                    cap = max_batch or (256 if det.device.type == "cuda" else 8)
                    points, note = sweep_batches(det, cap)
                    k = knee(points)
                    result.sweep = {"points": [p.to_dict() for p in points], "knee": k.batch if k else None, "note": note}
            if verify:
                result.findings = diagnose(result.to_dict())
                from yolotune.profile.verify import verify_findings

                with phase("verify"):
                    result.verify = verify_findings(model, str(det.device), opts, result.to_dict(), e2e_paths, repeats,
                                                    say)
        series = sampler.series
        result.counters = {**series.to_dict(), "t": [t - t_origin for t in series.t],
                              "e2e_gpu_util_mean": series.mean("gpu_util", e2e_start, e2e_end),
                              "e2e_mem_util_mean": series.mean("mem_util", e2e_start, e2e_end),
                              "e2e_sm_clock_mhz_mean": series.mean("sm_clock_mhz", e2e_start, e2e_end),
                              "e2e_power_w_mean": series.mean("power_w", e2e_start, e2e_end)}
        result.timeline = [[s.stage, s.batch, s.images, s.host_start - t_origin, s.host_enqueued - t_origin,
                               s.host_end - t_origin, None if s.gpu_start is None else s.gpu_start - t_origin,
                               None if s.gpu_end is None else s.gpu_end - t_origin] for s in spans]
        result.phases = phases
        result.findings = diagnose(result.to_dict())
        return result


def _layers_and_roofline(det, stages: list[dict], input_shape) -> tuple[list[dict], dict]:
    """Per-layer FLOPs/bytes/eager time at the run's input shape, and each section's roofline position."""
    peaks = device_peaks(det.device, "fp32" if det.engine.input_dtype == torch.float32 else
                         ("bf16" if det.engine.input_dtype == torch.bfloat16 else "fp16"))
    model = detection_model(det.engine)
    if model is None:
        return [], {"peaks": peaks.to_dict(), "points": [], "note": "opaque engine: no layer split"}
    runner = SectionRunner(model)
    b, _, h, w = input_shape or (det.batch, 3, *det.imgsz)
    x = torch.rand(b, 3, h, w, device=det.device).to(det.engine.input_dtype)
    if det.engine.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    layers = measure_layer_costs(runner, x)
    by_stage = {s["stage"]: s for s in stages}
    points = []
    for section in SECTIONS:
        mine = [lay for lay in layers if lay.section == section]
        st = by_stage.get(section)
        if not mine or st is None:
            continue
        per_image_ms = st["gpu_ms_per_image"] if st["gpu_ms_per_image"] is not None else st["ms_per_image"]
        points.append(RooflinePoint(section, sum(lay.flops for lay in mine), sum(lay.bytes for lay in mine),
                                    per_image_ms * b / 1e3))
    if points:
        points.append(RooflinePoint("model", sum(p.flops for p in points), sum(p.bytes for p in points),
                                    sum(p.seconds for p in points)))
    return [lay.to_dict() for lay in layers], {"peaks": peaks.to_dict(), "batch": b, "input_hw": [h, w],
                                                "points": [p.evaluate(peaks) for p in points]}


def _probes(det, staged: StagedPipeline, paths: list[str]) -> dict:
    out: dict = {}
    if det.device.type == "cuda" and det.post.nms_backend == "loop" and staged.last_raw is not None:
        out["batched_nms_ms"] = probes.batched_nms_ms(det, *staged.last_raw)
    if paths and is_video(paths[0]):  # both video decoders on the same frames, as predict runs them
        factory = video_decoder_for("auto", det.device if det.preprocess == "gpu" else None)
        out.update({f"video_decode_{k}": v for k, v in decode_probe(paths[0], factory).items()})
    elif det.device.type == "cuda" and det.preprocess == "cpu":
        out["gpu_decode_preprocess_ms"] = probes.gpu_decode_preprocess_ms(det, paths, max(det.batch, 8))
    elif paths and det.device.type == "cuda" and det.decoder.jpeg_decoder == "cuda":
        out["hardware_decode_ms"], out["hardware_decode_unavailable"] = probes.hardware_decode(
            det, paths, max(det.batch, 8))
    return out


def is_video(path: str) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES
