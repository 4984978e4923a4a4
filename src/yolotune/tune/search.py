"""``optimize()``: measure every candidate pipeline, keep those within the accuracy bound, pick the best for the
objective, pick its batch size, and save it as an artifact with a before/after report.

Each candidate is validated (mAP50-95 against labels, or against the FP32 reference's detections when the data has
none) before it may win. A candidate that fails to build, runs out of memory, or does not fit the time budget is
reported and skipped; Ctrl-C stops the search and still writes what was measured.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

import torch

from yolotune.interpreter import usable_cores
from yolotune.pipeline.detector import DEFAULT_CONF
from yolotune.profile.sweep import batch_sizes, letterboxed_images, measure_batch
from yolotune.tune.artifact import use_engine_cache, write_artifact
from yolotune.tune.candidates import Candidate, refinements, search_space
from yolotune.tune.files import CandidateFiles
from yolotune.tune.int8 import CalibrationError

OBJECTIVES = ("throughput", "latency")
CANVASES = ("auto", "square")
REFINE_MARGIN = 1.05
# kept for the winner's batch sizes (_choose_batch measures for at least 15 s): candidates that would eat into it
# are skipped (the H100's default run otherwise ended at 128 s of its 120)
SWEEP_RESERVE_S = 15.0  # a refinement replaces the engine it refines only when at least 5% better


def _model_file(model: str, work: Path) -> Path:
    """A file that holds the model: the user's .pt/.onnx, the embedded default, or a checkpoint of a .yaml."""
    from yolotune.assets import resolve

    embedded = resolve(model)
    if embedded is not None:
        return Path(embedded)
    path = Path(model)
    if path.suffix in (".pt", ".onnx") and path.is_file():
        return path
    if path.suffix in (".yaml", ".yml"):
        from yolotune.models import load_model
        from yolotune.models.ultralytics import save_ultralytics_checkpoint

        return save_ultralytics_checkpoint(load_model(model), work / f"{path.stem}.pt")
    raise ValueError(f"{model}: expected default, a .pt, .yaml or .onnx model")


def _dataset(data, device_type: str, work: Path, n: int | None, seed: int) -> Path:
    if data is not None:
        return Path(data)
    from yolotune.data.synth import write_dataset

    return write_dataset(work / f"data-{seed}", n or (200 if device_type == "cuda" else 48), seed=seed)


def _camera_canvas(ground_truth: dict, model_file: Path) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """((h, w) of the validation images, the canvas every candidate runs on) when the images are all one size, as a
    camera's frames are: that size letterboxed with the least padding (Ultralytics' rect), which is also what
    ``yolotune predict --rect`` would feed the model (384x640 for 720p at 640: 40% fewer pixels than the square).
    None: mixed sizes, or a model whose input size is fixed, or a canvas no smaller than the model's own."""
    from yolotune.models import load_model
    from yolotune.ops.letterbox import canvas_shape

    images = ground_truth.get("images") or []
    sizes = {(im.get("height"), im.get("width")) for im in images}
    if len(sizes) != 1 or None in next(iter(sizes)):
        return None
    spec = load_model(str(model_file)).spec
    if spec.fixed_hw is not None:
        return None
    size = next(iter(sizes))
    hw = canvas_shape([size], tuple(spec.imgsz), spec.stride, rect=True)
    return (size, hw) if hw != tuple(spec.imgsz) else None


def _images(folder: Path) -> list[str]:
    root = folder / "images" if (folder / "images").is_dir() else folder
    return sorted(str(p) for p in root.iterdir() if p.is_file()) if root.is_dir() else []


def optimize(
    model: str,
    data: str | Path | None = None,
    device: str = "auto",
    objective: str = "throughput",
    latency_ms: float | None = None,
    target_fps: float | None = None,
    memory_mib: float | None = None,
    budget_s: float = 120.0,
    max_drop: float = 1.0,
    out: str | Path = "yolotune-artifact",
    compile: bool = True,
    int8: bool = True,
    refine: bool = True,
    calibration: str | Path | None = None,
    probe_batch: int | None = None,
    max_batch: int | None = None,
    val_images: int | None = None,
    canvas: str = "auto",
    workdir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Search engines x precisions (then batch sizes) for ``objective`` within ``budget_s``; write an artifact.

    ``canvas``: "auto" tunes on the validation images' own least-padded canvas when they are all one size (a
    camera's frames), and the artifact keeps it; "square" always uses the model's square canvas.

    Returns the report dict (also written to ``out``/report.json and report.md).
    """
    from yolotune.data.validate import load_dataset
    from yolotune.pipeline.detector import Detector, resolve_device

    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, not {objective!r}")
    if canvas not in CANVASES:
        raise ValueError(f"canvas must be one of {CANVASES}, not {canvas!r}")
    say = progress or (lambda _m: None)
    t0 = time.perf_counter()
    dev = resolve_device(device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if compile and dev.type == "cuda":
        use_engine_cache(out)  # compiled kernels land in the artifact, so reloading it reuses them
    tmp = contextlib.ExitStack()
    # candidates' files (ONNX exports, INT8 models, generated data) live here; kept only when ``workdir`` is given
    work = Path(workdir) if workdir else Path(tmp.enter_context(tempfile.TemporaryDirectory(prefix="yolotune-optimize-")))
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"model": model, "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU",
                    "objective": objective, "latency_ms": latency_ms, "target_fps": target_fps, "memory_mib": memory_mib,
                    "budget_s": budget_s, "max_drop_points": max_drop, "candidates": [], "notes": []}
    with tmp:
        try:
            model_file = _model_file(model, work)
            say("preparing validation data")
            val = _dataset(data, dev.type, work, val_images, seed=101)
        except KeyboardInterrupt:
            report.update(interrupted=True, chosen=None)
            report["notes"].append("interrupted while preparing the validation data; nothing saved")
            _write_report(out, report)
            return report
        try:
            ground_truth, _ = load_dataset(val)
        except FileNotFoundError as e:
            raise ValueError(str(e)) from e
        camera = _camera_canvas(ground_truth, model_file) if canvas == "auto" else None
        # CPU: one image per core, which the ONNX Runtime engine runs in parallel (engine/ort.py)
        probe = probe_batch or (1 if objective == "latency" else min(usable_cores(), 8) if dev.type == "cpu" else 32)
        candidates = search_space(dev.type, compile=compile, int8=int8, budget_s=budget_s)
        if camera is not None:
            (h, w), hw = camera
            for cand in candidates:  # one canvas for all: the guard compares like with like, a compile is one shape
                cand.options = {**cand.options, "imgsz": list(hw)}
            report["canvas"] = {"images": [h, w], "imgsz": list(hw)}
            report["notes"].append(
                f"the validation images are all {w}x{h}: every candidate ran on their least-padded canvas, "
                f"{hw[0]}x{hw[1]}, and the artifact keeps it (inputs of other shapes are letterboxed into it; "
                f"--canvas square tunes on the model's square canvas)")
        reference = candidates[0]
        files = CandidateFiles(model_file, work, lambda: _images(Path(calibration)) if calibration else
                               _images(_dataset(None, "cpu", work, 32, seed=102)))
        key = (lambda c: -c.result["latency_ms_b1"]) if objective == "latency" else (lambda c: c.result["images_per_s"])
        interrupted = False

        def run(cand: Candidate) -> None:
            left = budget_s - (time.perf_counter() - t0)
            if not cand.reference and left - SWEEP_RESERVE_S < cand.est_cost_s:
                cand.result = {"status": "skipped", "reason": f"budget: {left:.0f} s left ({SWEEP_RESERVE_S:.0f} s of it "
                                                              f"kept for the batch sizes), needs ~{cand.est_cost_s:.0f} s"}
                return
            say(f"candidate {candidates.index(cand) + 1} of {len(candidates)}: {cand.name}")
            started = time.perf_counter()
            try:
                file = files.for_candidate(cand)
                cand.result = _evaluate(Detector, cand, file, dev, val, probe, reference, max_drop)
                cand.result["model_file"] = str(file)
            except CalibrationError as e:
                cand.result = {"status": "skipped", "reason": f"calibration: {e}"}
            except torch.OutOfMemoryError as e:
                torch.cuda.empty_cache()
                cand.result = {"status": "failed", "reason": f"out of GPU memory: {str(e)[:200]}"}
            except Exception as e:  # a candidate that cannot be built or run is reported, not fatal
                cand.result = {"status": "failed", "reason": f"{type(e).__name__}: {str(e)[:300]}",
                               "traceback": traceback.format_exc()[-1500:]}
                if cand.reference:
                    raise
            cand.result["seconds"] = round(time.perf_counter() - started, 1)

        try:
            by_name = {c.name: c for c in candidates}
            for cand in candidates:
                if cand.fallback_for and by_name[cand.fallback_for].result.get("status") != "failed":
                    cand.result = {"status": "not needed", "reason": f"{cand.fallback_for} did not fail"}
                    continue
                run(cand)
            # then the winner's own options: input size and top-k cap, each guarded like any candidate
            valid = [c for c in candidates if c.result.get("status") == "passed"]
            if refine and valid:
                winner = max(valid, key=key)
                with Detector(str(winner.result["model_file"]), device=str(dev), batch=1, **winner.options) as det:
                    hw, stride = det.imgsz, det.stride
                for cand in refinements(winner, hw, stride):
                    candidates.append(cand)
                    run(cand)
        except KeyboardInterrupt:
            interrupted = True
        report["interrupted"] = interrupted
        report["candidates"] = [c.to_dict() for c in candidates]
        valid = [c for c in candidates if c.result.get("status") == "passed"]
        if interrupted:
            report["notes"].append("interrupted: the best candidate measured so far was saved" if valid else
                                   "interrupted before any candidate passed the accuracy guard; nothing saved")
        elif not valid:
            report["notes"].append("no candidate passed the accuracy guard; nothing saved")
        if not valid:
            report["chosen"] = None
            _write_report(out, report)
            return report
        best = max(valid, key=key)
        by_name = {c.name: c for c in candidates}
        parent = by_name.get(best.refines) if best.refines else None
        if parent is not None and parent in valid and not _clearly_better(best, parent, objective):
            # a variant (smaller input, fewer NMS candidates) must win clearly, not by run-to-run noise
            report["notes"].append(f"{best.name} measured within {REFINE_MARGIN - 1:.0%} of {parent.name}: kept {parent.name}")
            best = parent
        say(f"batch sizes for {best.name}")
        batch, sweep = _choose_batch(Detector, best, dev, objective, latency_ms, target_fps, memory_mib, max_batch,
                                     budget_s - (time.perf_counter() - t0) if not interrupted else 0, _images(val))
        options = {**best.options, "batch": batch}
        if options.get("compile") and options.get("rect") is False and camera is None:
            report["notes"].append(
                "the compiled engine was guarded and saved on the square canvas (one canvas, one compile); for inputs "
                "of one aspect ratio, `yolotune predict ARTIFACT --rect` compiles their canvas once more and saves it "
                "in the artifact (720p JPEGs on the H100: 6,507-6,709 against 5,263-5,455 images/s end to end, "
                "benchmarks/results/e2e_diag_h100.md)")
        if dev.type == "cuda":
            options["cudnn_benchmark"] = cudnn_autotune(batch)
        report["chosen"] = {"name": best.name, "options": options, **best.result}
        report["batch_sweep"] = sweep
        report["summary"] = _summary(report, reference, best, batch, sweep)
        report["levers"] = _levers(candidates, sweep, probe)
        if best.engine == "onnxruntime" and batch > 1 and not interrupted:
            report["levers"].append(_split_lever(Detector, best, dev, batch, _images(val)))
        report["search_s"] = round(time.perf_counter() - t0, 1)
        write_artifact(out, best.result["model_file"], options,
                       {"tuned_on": report["device"], "objective": objective, "report": "report.json"})
        say("reloading the artifact")
        report["reload_s"] = _reload_seconds(Detector, out, dev)
        _write_report(out, report)
        return report


def _clearly_better(a: Candidate, b: Candidate, objective: str) -> bool:
    if objective == "latency":
        return a.result["latency_ms_b1"] * REFINE_MARGIN <= b.result["latency_ms_b1"]
    return a.result["images_per_s"] >= REFINE_MARGIN * b.result["images_per_s"]


def _evaluate(Detector, cand: Candidate, file: Path, dev, val: Path, probe: int, reference: Candidate,
              max_drop: float) -> dict:
    """Speed (probe batch and batch 1), memory, and accuracy against labels or the reference."""
    from yolotune.data.validate import accuracy_guard, guard_baseline

    # Every candidate sees the same square canvas: the guard then compares engines and precisions on identical
    # inputs, and an engine meets one input shape, not one per aspect ratio of the validation images (each new
    # shape costs cuDNN autotuning and, for graph engines, a capture: the batch-1 reference took 37 s on the H100).
    opts = {"rect": False, **cand.options}
    with Detector(str(file), device=str(dev), batch=probe, conf=0.001, **opts) as det:
        h, w = det.imgsz
        # CPU timings on shared machines swing widely: longer windows there (a median of three each way)
        window = 0.2 if dev.type == "cuda" else 0.8
        with _as_deployed(det):
            sample = letterboxed_images(_images(val), (h, w), det.device)
            speed = measure_batch(det, det.engine.fixed_batch or probe, h, w, repeats=3, min_seconds=window, sample=sample)
            latency = measure_batch(det, 1, h, w, repeats=3, min_seconds=window, sample=sample) if probe != 1 else speed
        # the reference runs over the validation set once; later candidates are scored against that run
        baseline = guard_baseline(det, val) if cand.reference else reference.result["_guard_baseline"]
        guard = accuracy_guard(det, val, reference=det if cand.reference else None, max_drop_points=max_drop,
                               baseline=baseline)
    result = {"status": "passed" if guard.passed else "rejected", "images_per_s": speed.images_per_s,
              "probe_batch": speed.batch, "latency_ms_b1": latency.latency_ms, "memory_mib": speed.memory_mib,
              "map50_95": guard.candidate.map50_95, "reference_map50_95": guard.reference_map50_95,
              "drop_points": guard.drop_points, "against": guard.against}
    if cand.reference:
        result["_guard_baseline"] = baseline
    if not guard.passed:
        result["reason"] = f"mAP50-95 drop {guard.drop_points:.2f} points > {max_drop}"
    return result


def cudnn_autotune(batch: int) -> bool:
    """Whether the artifact has cuDNN autotune its convolutions when it loads. Measured on the H100 with the
    compiled FP16 engine: at batch 1 autotuning made the step 5% slower (1,811 / 1,827 vs 1,916 / 1,924 images/s)
    and the first detections 1.0-1.9 s later (reload_diag_h100_b1_cudnn.json); at batch 128 it bought 4.5% for
    1.3-1.7 s (reload_diag_h100_bytecode_cudnn.json). So it is off for batch-1 artifacts only."""
    return batch > 1


@contextlib.contextmanager
def _as_deployed(det):
    """Time a candidate as it will run: the accuracy guard builds it with confidence 0.001 (the whole
    precision-recall curve), which sends hundreds of candidates per image through NMS; the artifact runs at the
    Detector's default threshold. Graphs are captured per input buffer, so the timing's own graphs get this one."""
    validating = det.post
    det.post = dataclasses.replace(validating, conf=DEFAULT_CONF)
    try:
        yield
    finally:
        det.post = validating


def _choose_batch(Detector, best: Candidate, dev, objective, latency_ms, target_fps, memory_mib, max_batch, left_s,
                  timing_images: list[str]):
    """Batch sizes for the winner; the pick honours the latency budget, FPS target and memory cap."""
    if objective == "latency":
        return 1, []
    cap = max_batch or (256 if dev.type == "cuda" else 8)
    probe = best.result["probe_batch"]
    rows = [{"batch": probe, "latency_ms": probe / best.result["images_per_s"] * 1e3,
             "images_per_s": best.result["images_per_s"], "memory_mib": best.result["memory_mib"]}] if probe <= cap else []
    # Around the probe batch first (larger, then smaller): a new shape can cost a graph capture or a compile,
    # so when time runs out the most promising sizes have been measured.
    sizes = [b for b in batch_sizes(cap) if b != probe]
    sizes.sort(key=lambda b: (b < probe, abs(b.bit_length() - probe.bit_length())))
    with Detector(best.result["model_file"], device=str(dev), batch=cap, **best.options) as det:
        h, w = det.imgsz
        sample = letterboxed_images(timing_images, (h, w), det.device)
        start = time.perf_counter()
        for b in sizes:
            if det.engine.fixed_batch not in (None, b):
                continue
            if rows and time.perf_counter() - start > max(15.0, left_s):
                break
            try:
                p = measure_batch(det, b, h, w, repeats=3, min_seconds=0.15, sample=sample)
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                continue
            rows.append(p.to_dict())
    rows.sort(key=lambda r: r["batch"])
    ok = [r for r in rows if (latency_ms is None or r["latency_ms"] <= latency_ms)
          and (memory_mib is None or r["memory_mib"] is None or r["memory_mib"] <= memory_mib)]
    if not ok:
        return (rows[0]["batch"] if rows else 1), rows
    if target_fps is not None:
        meeting = [r for r in ok if r["images_per_s"] >= target_fps]
        if meeting:  # the smallest batch that meets the target has the lowest latency
            return min(meeting, key=lambda r: r["batch"])["batch"], rows
    # max throughput: the smallest batch within 3% of the best (the knee), for far lower latency and memory
    best = max(r["images_per_s"] for r in ok)
    return min((r for r in ok if r["images_per_s"] >= 0.97 * best), key=lambda r: r["batch"])["batch"], rows


def _summary(report: dict, reference: Candidate, best: Candidate, batch: int, sweep: list[dict]) -> str:
    ref = reference.result
    at_batch = next((r for r in sweep if r["batch"] == batch), None)
    rate = at_batch["images_per_s"] if at_batch else best.result["images_per_s"]
    changes = [f"{k}={v}" for k, v in {**best.options, "batch": batch}.items() if reference.options.get(k) != v]
    if best.engine != reference.engine or best.calibration:
        changes.insert(0, f"{best.name} instead of {reference.name}")
    return (f"from {ref['images_per_s']:.0f} to {rate:.0f} images/s (model + NMS) on {report['device']} "
            f"({rate / ref['images_per_s']:.1f}x), batch-1 latency {ref['latency_ms_b1']:.2f} -> "
            f"{best.result['latency_ms_b1']:.2f} ms, mAP50-95 {ref['map50_95']:.4f} -> {best.result['map50_95']:.4f}, "
            f"because: {', '.join(changes) or 'the reference configuration was best'}")


def _levers(candidates: list[Candidate], sweep: list[dict], probe: int) -> list[dict]:
    """Each lever's contribution, measured one at a time on this run (pairs of candidates that differ in one option)."""
    by_name = {c.name: c.result for c in candidates if c.result.get("images_per_s")}
    pairs = [("FP16 (eager)", "eager fp32", "eager fp16"), ("CUDA graph (FP16)", "eager fp16", "graph fp16"),
             ("CUDA graph (FP32)", "eager fp32", "graph fp32"), ("compile (torch.compile, FP16 graph)", "graph fp16", "compiled+graph fp16"),
             ("BF16 vs FP16 (graph)", "graph fp16", "graph bf16"), ("ONNX Runtime vs PyTorch (CPU)", "torch fp32", "onnxruntime fp32")]
    pairs += [(f"INT8 {m} vs FP32 (ONNX Runtime)", "onnxruntime fp32", f"onnxruntime int8 ({m})") for m in ("minmax", "entropy", "percentile")]
    pairs += [("input " + c.name[len(c.refines):].strip(" ,@") if "@" in c.name else c.name[len(c.refines):].strip(" ,"),
               c.refines, c.name) for c in candidates if c.refines]
    out = []
    for lever, a, b in pairs:
        if a in by_name and b in by_name:
            out.append({"lever": lever, "from": a, "to": b, "speedup": by_name[b]["images_per_s"] / by_name[a]["images_per_s"],
                        "drop_points": by_name[b].get("drop_points"), "batch": by_name[a].get("probe_batch")})
    if len(sweep) > 1:
        first, best = sweep[0], max(sweep, key=lambda r: r["images_per_s"])
        out.append({"lever": f"batching ({first['batch']} -> {best['batch']})", "from": first["batch"], "to": best["batch"],
                    "speedup": best["images_per_s"] / first["images_per_s"], "drop_points": 0.0, "batch": best["batch"]})
    return out


def _split_lever(Detector, best: Candidate, dev, batch: int, timing_images: list[str]) -> dict:
    """The ONNX Runtime engine's batch split across the cores (engine/ort.py) against one run on every core, at
    the chosen batch, measured in turns (three each way, the median)."""
    rates: dict[bool, list[float]] = {True: [], False: []}
    dets = {split: Detector(best.result["model_file"], device=str(dev), batch=batch, split_batch=split, **best.options)
            for split in (True, False)}
    try:
        h, w = dets[True].imgsz
        sample = letterboxed_images(timing_images, (h, w), dets[True].device)
        for _ in range(3):
            for split, det in dets.items():
                with _as_deployed(det):
                    rates[split].append(measure_batch(det, batch, h, w, repeats=1, min_seconds=0.5, sample=sample).images_per_s)
    finally:
        for det in dets.values():
            det.close()
    on, off = (sorted(rates[k])[1] for k in (True, False))
    return {"lever": f"batch split across the cores ({dets[True].engine.workers} single-threaded parts)",
            "from": "one run", "to": "split", "speedup": on / off, "drop_points": 0.0, "batch": batch}


def _reload_seconds(Detector, out: Path, dev) -> float:
    """Seconds from Detector(artifact) to the first detections of a batch (graph capture / compile cache included)."""
    import numpy as np

    start = time.perf_counter()
    with Detector(str(out), device=str(dev)) as det:
        det.detect([np.zeros((720, 1280, 3), np.uint8)] * min(det.batch, 4))
    return round(time.perf_counter() - start, 2)


def _write_report(out: Path, report: dict) -> None:
    import json

    for c in report["candidates"]:
        c.pop("_guard_baseline", None)
    if report.get("chosen"):
        report["chosen"].pop("_guard_baseline", None)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "report.md").write_text(report_markdown(report))
    from yolotune.report.optimize_html import write_optimize_report

    write_optimize_report(report, out / "report.html")


def report_markdown(r: dict) -> str:
    lines = [f"# yolotune optimize: {r['model']} on {r['device']}", ""]
    if r.get("summary"):
        lines += [f"**{r['summary']}**", ""]
    lines += [f"Objective: {r['objective']}; accuracy bound {r['max_drop_points']} mAP50-95 points; budget {r['budget_s']} s"
              + (f"; search took {r['search_s']} s; reloading the artifact {r['reload_s']} s" if r.get("search_s") else ""), ""]
    lines += ["| candidate | status | images/s (probe batch) | batch-1 latency ms | memory MiB | mAP50-95 | drop (points) | note |",
              "|---|---|---|---|---|---|---|---|"]
    for c in r["candidates"]:
        f = lambda k, d=1: "" if c.get(k) is None else f"{c[k]:.{d}f}"  # noqa: E731
        lines.append(f"| {c['name']} | {c.get('status', '')} | {f('images_per_s')} | {f('latency_ms_b1', 3)} | "
                     f"{f('memory_mib', 0)} | {f('map50_95', 4)} | {f('drop_points', 2)} | {c.get('reason', '')} |")
    if r.get("levers"):
        lines += ["", "| lever | speedup | mAP drop (points) |", "|---|---|---|"]
        lines += [f"| {lv['lever']} | {lv['speedup']:.2f}x | {lv['drop_points'] if lv['drop_points'] is None else round(lv['drop_points'], 2)} |"
                  for lv in r["levers"]]
    if r.get("batch_sweep"):
        lines += ["", "| batch | images/s | ms per batch | memory MiB |", "|---|---|---|---|"]
        lines += [f"| {s['batch']} | {s['images_per_s']:.0f} | {s['latency_ms']:.2f} | {s['memory_mib'] or ''} |" for s in r["batch_sweep"]]
    lines += [""] + [f"- {n}" for n in r.get("notes", [])]
    return "\n".join(lines) + "\n"
