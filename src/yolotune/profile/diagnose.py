"""Findings from a profile's measurements: what limits the pipeline, the figure that shows it, what to change.

A small pipeline model turns measured per-image stage costs (medians over batches) into a throughput: the producer
(reading runs ahead in its own thread, then decode, preprocess, upload) and the consumer (model, NMS, copy-back,
results) overlap, imperfectly: time/image = max(P, C) + a * min(P, C), where the overlap loss ``a`` (GIL and CPU
contention between the threads) is calibrated on the measured end-to-end rate. A recommendation is a change of the Detector's options plus the stage costs it is expected to change
(from this run's own measurements: kernel busy time, a sweep point, a probe of the batched NMS); its predicted gain
is the model's throughput after / before. ``--verify`` then measures the real gain by running those options.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from yolotune.profile.roofline import bandwidth_words, flops_words

PRODUCER = ("read", "decode", "preprocess", "h2d")
CONSUMER = ("backbone", "neck", "head", "model", "nms", "d2h", "sink")
MODEL = ("backbone", "neck", "head", "model")


@dataclass
class PipelineModel:
    """Per-image stage times (ms) of the serialised run, and the overlap loss ``a`` (0 = perfect overlap)."""

    ms: dict[str, float]
    overlap_loss: float = 0.0

    def producer(self) -> float:
        return max(self.ms.get("read", 0.0), sum(self.ms.get(s, 0.0) for s in PRODUCER if s != "read"))

    def consumer(self) -> float:
        return sum(self.ms.get(s, 0.0) for s in CONSUMER)

    def ms_per_image(self) -> float:
        p, c = self.producer(), self.consumer()
        return max(p, c) + self.overlap_loss * min(p, c)

    def images_per_s(self) -> float:
        t = self.ms_per_image()
        return 1000.0 / t if t > 0 else 0.0

    def with_changes(self, changes: dict[str, float]) -> "PipelineModel":
        return PipelineModel({**self.ms, **changes}, self.overlap_loss)

    def calibrated(self, measured_images_per_s: float | None) -> "PipelineModel":
        """The same stages with the overlap loss that reproduces the measured end-to-end rate (clamped to [0, 1])."""
        p, c = self.producer(), self.consumer()
        if not measured_images_per_s or min(p, c) <= 0:
            return self
        loss = (1000.0 / measured_images_per_s - max(p, c)) / min(p, c)
        return PipelineModel(self.ms, min(1.0, max(0.0, loss)))


@dataclass
class Finding:
    kind: str
    title: str
    evidence: str
    recommendation: str
    options: dict = field(default_factory=dict)  # Detector options that apply the recommendation ({} if none)
    predicted_gain: float | None = None  # throughput after / before, from the pipeline model
    basis: str = ""  # how the prediction was made
    severity: float = 0.0  # share of the bottleneck's time this finding explains (for ordering)

    def to_dict(self) -> dict:
        return dict(vars(self))


def diagnose(p: dict) -> list[Finding]:
    """Findings for a profile dict (see ``profile.run``), most severe first."""
    stages = {s["stage"]: s for s in p["stages"]}
    ms = {k: v.get("ms_per_image_p50", v["ms_per_image"]) for k, v in stages.items()}
    model = PipelineModel(ms).calibrated((p.get("e2e") or {}).get("images_per_s"))
    opts = p["options"]
    cuda = p["device"]["type"] == "cuda"
    kernels = p.get("kernels", {})
    findings: list[Finding] = []
    prod, cons = model.producer(), model.consumer()
    bound = max(prod, cons) or 1e-9

    def gain(changes: dict[str, float]) -> float:
        return model.with_changes(changes).images_per_s() / max(model.images_per_s(), 1e-9)

    # Host-bound decode / preprocess: the producer side binds and the host does the pixel work.
    host_pixels = ms.get("decode", 0) + ms.get("preprocess", 0) + ms.get("h2d", 0)
    if cuda and opts.get("preprocess") == "cpu" and prod >= cons * 0.8:
        gpu_pre = p.get("probes", {}).get("gpu_decode_preprocess_ms")
        changes = {"decode": gpu_pre if gpu_pre is not None else 0.0, "preprocess": 0.0, "h2d": 0.0}
        findings.append(Finding(
            "host_bound_preprocess",
            "Host-bound decode and preprocessing",
            f"decode + letterbox + upload take {host_pixels:.2f} ms/image on the CPU ({prod:.2f} ms/image producer side) "
            f"against {cons:.2f} ms/image of GPU-side work: the GPU waits for the host.",
            "Decode JPEGs with nvJPEG and letterbox on the GPU in batches (preprocess='gpu').",
            {"preprocess": "gpu", "gpu_decode": True, "workers": None},
            gain(changes),
            "producer cost with decode + letterbox measured on the GPU" if gpu_pre is not None else
            "producer cost without decode + letterbox (upper bound)",
            host_pixels / bound,
        ))

    # The video decoder: decoding a video's frames is most of the producer side, and the producer binds.
    inputs = p.get("inputs") or {}
    decode = ms.get("decode", 0)
    if inputs.get("video") and decode >= 0.5 * bound and prod >= cons * 0.8:
        findings.append(video_decode_finding(inputs["video_decode"], decode, cons, bound, p.get("probes", {}), gain))

    # JPEG decoding on the SMs: CUDA nvJPEG's kernels and the model's take turns on the same SMs.
    shared = decode_shares_sms_finding(p, ms, kernels, gain, bound)
    if shared is not None:
        findings.append(shared)

    # File reading: the reader thread (read + JPEG header parse) is the slowest producer part and the producer binds.
    read = ms.get("read", 0)
    rest = sum(ms.get(s, 0) for s in PRODUCER if s != "read")
    if read > rest and prod >= cons and read > 0:
        mean_bytes = (p.get("inputs") or {}).get("mean_bytes") or 0
        workers = opts.get("decode_workers") or 1
        findings.append(Finding(
            "host_bound_read",
            "File reading sets the pace",
            f"reading files takes {read:.3f} ms/image ({mean_bytes / 1e3 / read if read else 0:.0f} MB/s with "
            f"{workers} threads), more than decode + preprocess ({rest:.3f} ms) and the GPU side ({cons:.3f} ms).",
            "More reader threads (workers), files on faster storage or in the page cache, or frames from memory.",
            {"workers": min(64, 2 * workers)},
            gain({"read": read / 2}),
            "reading at twice the threads (upper bound: half the time)",
            read / bound,
        ))

    # Kernel-launch overhead: the model's stages take far longer on the host than their kernels run on the GPU.
    model_wall = sum(ms.get(s, 0) for s in MODEL)
    busy = sum(kernels.get(s, {}).get("gpu_busy_ms", 0) for s in MODEL)
    launches = sum(kernels.get(s, {}).get("launches", 0) for s in MODEL + ("nms",))
    if cuda and not opts.get("cuda_graph_active") and busy > 0 and model_wall > 1.5 * busy:
        nms_busy = kernels.get("nms", {}).get("gpu_busy_ms", 0)
        changes = {s: kernels.get(s, {}).get("gpu_busy_ms", ms.get(s, 0)) for s in MODEL if s in ms}
        options = {"cuda_graph": True}
        if opts.get("nms") == "loop":
            options["nms"] = "auto"  # graphs need the fixed-shape batched NMS
            probe = p.get("probes", {}).get("batched_nms_ms")
            changes["nms"] = probe if probe is not None else nms_busy
        findings.append(Finding(
            "launch_overhead",
            "Kernel-launch overhead",
            f"{launches:.0f} kernel launches per image; the model's stages take {model_wall:.2f} ms/image while their "
            f"kernels keep the GPU busy {busy:.2f} ms/image ({busy / model_wall:.0%}): the host launching kernels is "
            "the limit.",
            "Capture model + NMS as one CUDA graph per batch size and replay it (cuda_graph=True).",
            options,
            gain(changes),
            "model stages at their measured GPU busy time (one graph launch)",
            (model_wall - busy) / bound,
        ))

    # NMS share: a large part of the consumer is NMS (and, looped per image, host syncs).
    nms = ms.get("nms", 0)
    if nms > 0.15 * bound:
        probe = p.get("probes", {}).get("batched_nms_ms")
        looped = opts.get("nms") == "loop"
        findings.append(Finding(
            "nms_share",
            "NMS takes a large share",
            f"NMS takes {nms:.2f} ms/image, {nms / bound:.0%} of the bottleneck side ({bound:.2f} ms/image)"
            + ("; it loops over images with a host synchronisation each." if looped else "."),
            "Use the batched GPU NMS (one fixed-shape pass for the whole batch, inside the CUDA graph)" if looped
            else "Cap candidates before NMS (lower topk, higher conf) or use an NMS-free (end-to-end) head.",
            {"nms": "auto"} if looped else {},
            gain({"nms": probe}) if looped and probe is not None else None,
            "NMS at the measured time of the batched kernel on this run's candidates" if looped else "",
            nms / bound,
        ))

    # Transfers: copies between host and device are a visible share.
    xfer = ms.get("h2d", 0) + ms.get("d2h", 0)
    if cuda and xfer > 0.1 * bound:
        findings.append(Finding(
            "transfers",
            "Host-device transfers",
            f"H2D + D2H take {xfer:.2f} ms/image ({xfer / bound:.0%} of the bottleneck side).",
            "Upload compressed JPEG bytes and decode on the GPU (preprocess='gpu'), from pinned memory, "
            "and copy back only the fixed-size detections.",
            {"preprocess": "gpu", "gpu_decode": True, "workers": None} if opts.get("preprocess") == "cpu" else {},
            gain({"h2d": 0.0}),
            "upload of decoded pixels removed",
            xfer / bound,
        ))

    # Result handling: turning detections into records (JSON here) on the consumer thread.
    sink = ms.get("sink", 0)
    if sink > 0.15 * bound and cons >= prod:
        dets = (p.get("e2e") or {}).get("detections_per_image")
        per = f" for {dets:.0f} detections/image" if dets is not None else ""
        findings.append(Finding(
            "sink_share",
            "Result handling takes a large share",
            f"serialising results takes {sink:.3f} ms/image{per}, {sink / bound:.0%} of the bottleneck side "
            f"({bound:.3f} ms/image), on the same thread that feeds the GPU.",
            "Keep fewer boxes (higher conf, lower max_det), write a binary/columnar format, or hand results to a "
            "separate writer process.",
            {},
            None,
            "",
            sink / bound,
        ))

    # Batch size: the sweep shows much more throughput at another batch.
    sweep = p.get("sweep") or {}
    points = sweep.get("points") or []
    knee_b = sweep.get("knee")
    here = next((q for q in points if q["batch"] == opts.get("batch")), None)
    best = next((q for q in points if q["batch"] == knee_b), None)
    if here and best and best["images_per_s"] > 1.3 * here["images_per_s"]:
        per_img_now, per_img_best = 1000.0 / here["images_per_s"], 1000.0 / best["images_per_s"]
        model_nms_now = sum(ms.get(s, 0) for s in MODEL + ("nms",))
        scale = per_img_best / per_img_now
        changes = {s: ms[s] * scale for s in MODEL + ("nms",) if s in ms}
        findings.append(Finding(
            "batch_size",
            "Batch size below the throughput knee",
            f"model + NMS run {here['images_per_s']:.0f} images/s at batch {here['batch']} and "
            f"{best['images_per_s']:.0f} images/s at batch {best['batch']} (the curve flattens there).",
            f"Run batches of {best['batch']} (latency per batch {best['latency_ms']:.2f} ms).",
            {"batch": best["batch"]},
            gain(changes),
            f"model + NMS scaled by the sweep ({model_nms_now:.2f} -> {model_nms_now * scale:.2f} ms/image)",
            (model_nms_now * (1 - scale)) / bound,
        ))

    # Memory bandwidth or compute, for the model stages when the GPU (not the host) is their limit.
    roof = p.get("roofline") or {}
    model_point = next((q for q in roof.get("points", []) if q["name"] == "model"), None)
    gpu_bound_model = cuda and busy > 0 and model_wall <= 1.5 * busy
    cpu_bound_model = not cuda and model_wall >= 0.5 * bound
    if model_point and (gpu_bound_model or cpu_bound_model):
        frac = model_point["fraction_of_roof"]
        kind = "memory_bandwidth" if model_point["bound"] == "memory" else "compute"
        lower = opts.get("precision") == "fp32"
        findings.append(Finding(
            kind,
            "Memory-bandwidth bound model" if kind == "memory_bandwidth" else "Compute-bound model",
            f"arithmetic intensity {model_point['intensity']:.1f} FLOP/byte "
            f"({'below' if kind == 'memory_bandwidth' else 'above'} the ridge {roof['peaks']['ridge']:.0f}); "
            f"achieved {flops_words(model_point['achieved_tflops'] * 1e12)}, "
            f"{bandwidth_words(model_point['achieved_gbps'] * 1e9)}, "
            f"{frac:.0%} of the roof at that intensity.",
            ("Halve bytes and use tensor cores: FP16 (precision='fp16')" if lower and cuda else
             "Fewer bytes per image: fuse more (compiled engine), INT8/FP8, or larger batches." if cuda else
             "The CPU computes the model: an INT8 ONNX Runtime engine (yolotune optimize) or a GPU."),
            {"precision": "fp16"} if lower and cuda else {},
            gain({s: ms[s] - 0.5 * kernels.get(s, {}).get("gpu_busy_ms", 0) for s in MODEL if s in ms})
            if lower and cuda else None,
            "model kernels at half their measured busy time" if lower and cuda else "",
            model_wall / bound * 0.5,
        ))

    # GPU idle during the real (overlapped) run.
    util = (p.get("counters") or {}).get("e2e_gpu_util_mean")
    if cuda and util is not None and util < 60:
        host_only = [s for s in ms if kernels.get(s, {}).get("gpu_busy_ms", 0) == 0]
        top = max(host_only, key=lambda s: ms[s], default="host work")
        side = f"host-side stage '{top}' ({ms.get(top, 0):.3f} ms/image, the largest with no GPU work)"
        findings.append(Finding(
            "gpu_idle",
            "GPU idle gaps",
            f"NVML reports the GPU busy {util:.0f}% of the time during the end-to-end run; the {side} leaves it waiting.",
            "Remove the host-side bottleneck named in the other findings; overlap is already on (two slots, "
            "separate streams).",
            {},
            None,
            "",
            (100 - util) / 100 * 0.5,
        ))

    # Load imbalance between the overlapped halves.
    if prod > 0 and cons > 0 and max(prod, cons) > 2.0 * min(prod, cons):
        slow = "producer (read/decode/preprocess)" if prod > cons else "consumer (model/NMS/results)"
        findings.append(Finding(
            "load_imbalance",
            "Load imbalance between pipeline halves",
            f"producer {prod:.2f} ms/image vs consumer {cons:.2f} ms/image: the {slow} sets the pace, "
            f"the other side idles {1 - min(prod, cons) / max(prod, cons):.0%} of the time.",
            "Move work to the idle side or speed up the slow one (see the findings above).",
            {},
            None,
            "",
            0.1,
        ))

    # Pipeline efficiency: the real overlapped run vs the model's prediction.
    e2e = (p.get("e2e") or {}).get("images_per_s")
    if e2e and model.images_per_s() > 0 and e2e < 0.6 * model.images_per_s():
        findings.append(Finding(
            "overlap",
            "Stages overlap less than they could",
            f"end to end {e2e:.0f} images/s, while the slower pipeline half alone allows "
            f"{model.images_per_s():.0f} images/s.",
            "Check for synchronisation between the halves (GIL-heavy host work in both threads, blocking copies).",
            {},
            None,
            "",
            0.05,
        ))
    findings.sort(key=lambda f: -f.severity)
    return findings


def video_decode_finding(decoded_on: str, decode: float, consumer: float, bound: float, probe: dict, gain) -> Finding:
    """The video decoder sets the pace: where NVDEC decodes this video faster than FFmpeg, decode it there; where it
    decodes it already, one video is one NVDEC session, frame after frame (several videos or streams at once use
    the other engines)."""
    cpu, nvdec = probe.get("video_decode_cpu_ms_per_frame"), probe.get("video_decode_nvdec_ms_per_frame")
    measured = ", ".join(f"{name} {v:.2f} ms/frame" for name, v in (("FFmpeg", cpu), ("NVDEC", nvdec)) if v)
    where = "NVDEC" if decoded_on == "nvdec" else "FFmpeg on the CPU"
    evidence = (f"decoding the video takes {decode:.2f} ms/frame ({where}), {decode / bound:.0%} of the bottleneck "
                f"side, against {consumer:.2f} ms/frame for the model, NMS and results"
                + (f"; both decoders on the same frames: {measured}" if measured else ""))
    if decoded_on == "cpu" and nvdec and nvdec < decode:
        return Finding("video_decode_bound", "The video decoder sets the pace", evidence,
                       "Decode the video on the GPU's NVDEC engines (video_decode='nvdec'); its frames stay in GPU "
                       "memory.", {"video_decode": "nvdec"}, gain({"decode": nvdec}),
                       "producer cost with decoding at the NVDEC probe's rate", decode / bound)
    if decoded_on == "cpu":
        advice = ("NVDEC is not faster here (or not available): decode several videos at once (yolotune run, a "
                  "stream each) so the CPU's cores share the work, or lower the video's resolution or frame rate.")
    else:
        advice = ("One video is one NVDEC session, decoded frame after frame: run several videos or streams at once "
                  "(yolotune run) to use the GPU's other NVDEC engines.")
    return Finding("video_decode_bound", "The video decoder sets the pace", evidence, advice, {}, None, "",
                   decode / bound)


def decode_shares_sms_finding(p: dict, ms: dict, kernels: dict, gain, bound: float) -> Finding | None:
    """CUDA nvJPEG decodes with kernels on the SMs the model needs: where its busy time is a real share of the GPU's
    and the end-to-end rate sits near what the two allow in turn (1 / (decode + model busy time)), the GPU's
    hardware JPEG decoders (NVJPG) take the decoding off the SMs."""
    opts = p["options"]
    if p["device"]["type"] != "cuda" or opts.get("jpeg_decode") != "cuda" or opts.get("preprocess") != "gpu":
        return None
    decode_busy = kernels.get("decode", {}).get("gpu_busy_ms", 0.0)
    model_busy = sum(kernels.get(s, {}).get("gpu_busy_ms", 0.0) for s in MODEL + ("nms",))
    e2e = (p.get("e2e") or {}).get("images_per_s")
    if decode_busy <= 0 or model_busy <= 0 or decode_busy < 0.25 * model_busy:
        return None
    in_turn = decode_busy + model_busy  # ms/image when the SMs serve one, then the other
    if e2e and 1000.0 / e2e < 0.7 * in_turn:
        return None  # the pipeline runs well above the in-turn bound: something else sets the pace
    evidence = (f"CUDA nvJPEG's kernels keep the SMs busy {decode_busy:.3f} ms/image and the model + NMS "
                f"{model_busy:.3f} ms/image; on the same SMs they take turns: {in_turn:.3f} ms/image, "
                f"{1000.0 / in_turn:,.0f} images/s at most"
                + (f", and the pipeline ran {e2e:,.0f} images/s end to end" if e2e else ""))
    hardware = (p.get("probes") or {}).get("hardware_decode_ms")
    if hardware is not None:
        return Finding("decode_shares_sms", "Decode shares the SMs with the model", evidence,
                       "Decode JPEGs on the GPU's hardware JPEG decoders (jpeg_decode='hardware'): NVJPG engines, "
                       "off the SMs, shared with CUDA nvJPEG by their measured rates.",
                       {"jpeg_decode": "hardware"}, gain({"decode": hardware}),
                       f"producer cost with decoding at the hardware probe's {hardware:.3f} ms/image, the overlap "
                       "as measured: an estimate only, --verify measures it (on an H200 the hardware path ran "
                       "slower end to end than CUDA nvJPEG alone)", decode_busy / max(bound, 1e-9))
    why = (p.get("probes") or {}).get("hardware_decode_unavailable") or "no hardware JPEG decoder was found"
    return Finding("decode_shares_sms", "Decode shares the SMs with the model", evidence,
                   f"Hardware JPEG decoding is not available here ({why}). On a GPU with NVJPG engines (A100, H100, "
                   "H200, L4, ...) install yolotune[jpeg]; elsewhere, smaller JPEGs at the source or frames "
                   "handed over already decoded.", {}, None, "", decode_busy / max(bound, 1e-9))
