"""What each option bought: the before/after summary line and the lever table of an optimize report."""

from __future__ import annotations

from yolotune.profile.sweep import letterboxed_images, measure_batch
from yolotune.tune.batch import as_deployed
from yolotune.tune.candidates import INT8_CALIBRATIONS, Candidate
from yolotune.tune.report import Lever

# pairs of candidates that differ in one option: (lever, without it, with it)
_PAIRS = [("FP16 (eager)", "eager fp32", "eager fp16"), ("CUDA graph (FP16)", "eager fp16", "graph fp16"),
          ("CUDA graph (FP32)", "eager fp32", "graph fp32"),
          ("compile (torch.compile, FP16 graph)", "graph fp16", "compiled+graph fp16"),
          ("BF16 vs FP16 (graph)", "graph fp16", "graph bf16"),
          ("ONNX Runtime vs PyTorch (CPU)", "torch fp32", "onnxruntime fp32")]
_PAIRS += [(f"INT8 {m} vs FP32 (ONNX Runtime)", "onnxruntime fp32", f"onnxruntime int8 ({m})")
           for m in INT8_CALIBRATIONS]
_PAIRS += [("OpenVINO vs ONNX Runtime (FP32)", "onnxruntime fp32", "openvino fp32")]
_PAIRS += [(f"OpenVINO vs ONNX Runtime (INT8 {m})", f"onnxruntime int8 ({m})", f"openvino int8 ({m})")
           for m in INT8_CALIBRATIONS]


def summary(device: str, reference: Candidate, best: Candidate, batch: int, sweep: list[dict]) -> str:
    ref = reference.result
    at_batch = next((r for r in sweep if r["batch"] == batch), None)
    rate = at_batch["images_per_s"] if at_batch else best.result["images_per_s"]
    mine, theirs = best.options.replace(batch=batch).changed(), reference.options.changed()
    changes = [f"{k}={v}" for k, v in mine.items() if theirs.get(k) != v]
    if best.engine != reference.engine or best.calibration:
        changes.insert(0, f"{best.name} instead of {reference.name}")
    return (f"from {ref['images_per_s']:.0f} to {rate:.0f} images/s (model + NMS) on {device} "
            f"({rate / ref['images_per_s']:.1f}x), batch-1 latency {ref['latency_ms_b1']:.2f} -> "
            f"{best.result['latency_ms_b1']:.2f} ms, mAP50-95 {ref['map50_95']:.4f} -> {best.result['map50_95']:.4f}, "
            f"because: {', '.join(changes) or 'the reference configuration was best'}")


def levers(candidates: list[Candidate], sweep: list[dict]) -> list[Lever]:
    """Each lever's contribution, measured one at a time on this run."""
    by_name = {c.name: c.result for c in candidates if c.result.get("images_per_s")}
    pairs = list(_PAIRS)
    pairs += [("input " + c.name[len(c.refines):].strip(" ,@") if "@" in c.name else c.name[len(c.refines):].strip(" ,"),
               c.refines, c.name) for c in candidates if c.refines]
    out = []
    for lever, a, b in pairs:
        if a in by_name and b in by_name:
            out.append(Lever(lever, a, b, by_name[b]["images_per_s"] / by_name[a]["images_per_s"],
                             by_name[b].get("drop_points"), by_name[a].get("probe_batch")))
    if len(sweep) > 1:
        first, best = sweep[0], max(sweep, key=lambda r: r["images_per_s"])
        out.append(Lever(f"batching ({first['batch']} -> {best['batch']})", first["batch"], best["batch"],
                         best["images_per_s"] / first["images_per_s"], 0.0, best["batch"]))
    return out


def split_lever(Detector, best: Candidate, dev, batch: int, timing_images: list[str]) -> Lever:
    """The ONNX Runtime engine's batch split across the cores (engine/ort.py) against one run on every core, at
    the chosen batch, measured in turns (three each way, the median)."""
    rates: dict[bool, list[float]] = {True: [], False: []}
    dets = {split: Detector(best.result["model_file"], best.options.replace(device=str(dev), batch=batch, split_batch=split))
            for split in (True, False)}
    try:
        h, w = dets[True].imgsz
        sample = letterboxed_images(timing_images, (h, w), dets[True].device)
        for _ in range(3):
            for split, det in dets.items():
                with as_deployed(det):
                    rates[split].append(measure_batch(det, batch, h, w, repeats=1, min_seconds=0.5, sample=sample).images_per_s)
    finally:
        for det in dets.values():
            det.close()
    on, off = (sorted(rates[k])[1] for k in (True, False))
    return Lever(f"batch split across the cores ({dets[True].engine.workers} single-threaded parts)", "one run", "split",
                 on / off, 0.0, batch)
