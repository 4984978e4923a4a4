"""``optimize()``: measure every candidate pipeline, keep those within the accuracy bound, pick the best for the
objective, pick its batch size, and save it as an artifact with a before/after report.

Each candidate is validated (mAP50-95 against labels, or against the FP32 reference's detections when the data has
none) before it may win. A candidate that fails to build, runs out of memory, or does not fit the time budget is
reported and skipped; Ctrl-C stops the search and still writes what was measured.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from yolotune.interpreter import usable_cores
from yolotune.models.artifact import use_engine_cache
from yolotune.profile.sweep import letterboxed_images, measure_batch
from yolotune.tune.artifact import write_artifact
from yolotune.tune.batch import as_deployed, choose_batch, cudnn_autotune
from yolotune.tune.candidates import Candidate, refinements, search_space
from yolotune.tune.files import CandidateFiles, hw_of
from yolotune.tune.int8 import CalibrationError
from yolotune.tune.int8_control import accuracy_control
from yolotune.tune.levers import levers, split_lever, summary
from yolotune.tune.report import Chosen, OptimizeReport, write_report

OBJECTIVES = ("throughput", "latency")
CANVASES = ("auto", "square")
REFINE_MARGIN = 1.05
# kept for the winner's batch sizes (choose_batch measures for at least 15 s): candidates that would eat into it
# are skipped, so the search ends within its budget
SWEEP_RESERVE_S = 15.0  # a refinement replaces the engine it refines only when at least 5% better
CONTROL_IMAGES = 12  # calibration images the INT8 layer ranking compares outputs on
# tried after INT8's accuracy control (tune/candidates.py INT8_CALIBRATIONS)
LATER_CALIBRATIONS = ("entropy", "minmax")


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
    stop: threading.Event | None = None,
) -> OptimizeReport:
    """Search engines x precisions (then batch sizes) for ``objective`` within ``budget_s``; write an artifact.

    ``canvas``: "auto" tunes on the validation images' own least-padded canvas when they are all one size (a
    camera's frames), and the artifact keeps it; "square" always uses the model's square canvas.

    ``stop``: once set (a signal handler's event), no further candidate starts, as on Ctrl-C; a KeyboardInterrupt
    that a finalizer swallowed still stops the search there.

    Returns the report (also written to ``out``/report.json, report.md and report.html).
    """
    from yolotune.pipeline.detector import resolve_device

    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, not {objective!r}")
    if canvas not in CANVASES:
        raise ValueError(f"canvas must be one of {CANVASES}, not {canvas!r}")
    dev = resolve_device(device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if compile and dev.type == "cuda":
        use_engine_cache(out)  # compiled kernels land in the artifact, so reloading it reuses them
    report = OptimizeReport(model, torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU", objective,
                            latency_ms, target_fps, memory_mib, budget_s, max_drop)
    limits = _Limits(objective, latency_ms, target_fps, memory_mib, max_batch, budget_s, max_drop, time.perf_counter())
    with contextlib.ExitStack() as tmp:
        # candidates' files (ONNX exports, INT8 models, generated data) live here; kept only when ``workdir`` is given
        work = Path(workdir) if workdir else Path(tmp.enter_context(tempfile.TemporaryDirectory(prefix="yolotune-optimize-")))
        work.mkdir(parents=True, exist_ok=True)
        try:
            model_file = _model_file(model, work)
            (progress or (lambda _m: None))("preparing validation data")
            val = _dataset(data, dev.type, work, val_images, seed=101)
        except KeyboardInterrupt:
            report.interrupted = True
            report.notes.append("interrupted while preparing the validation data; nothing saved")
            write_report(out, report)
            return report
        search = _Search(report, limits, dev, model_file, val, work, calibration, progress, stop)
        search.plan(canvas, probe_batch, compile, int8)
        search.run_all(refine)
        search.finish(out)
    return report


@dataclass
class _Limits:
    """What the caller asked of the search."""

    objective: str
    latency_ms: float | None
    target_fps: float | None
    memory_mib: float | None
    max_batch: int | None
    budget_s: float
    max_drop: float
    started: float

    def left_s(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    def key(self, c: Candidate) -> float:
        return -c.result["latency_ms_b1"] if self.objective == "latency" else c.result["images_per_s"]


class _Search:
    """One optimize run: the candidates, measured in order within the budget, then the winner saved."""

    def __init__(self, report: OptimizeReport, limits: _Limits, dev, model_file: Path, val: Path, work: Path,
                 calibration, progress, stop: threading.Event | None = None):
        from yolotune.data.validate import load_dataset

        self.report, self.limits, self.dev = report, limits, dev
        self.model_file, self.val, self.work = model_file, val, work
        self.say = progress or (lambda _m: None)
        self.stop = stop
        try:
            self.ground_truth, _ = load_dataset(val)
        except FileNotFoundError as e:
            raise ValueError(str(e)) from e
        self.files = CandidateFiles(model_file, work, lambda: _images(Path(calibration)) if calibration else
                                    _images(_dataset(None, "cpu", work, 32, seed=102)))
        self.candidates: list[Candidate] = []
        self.camera = None

    def plan(self, canvas: str, probe_batch: int | None, compile: bool, int8: bool) -> None:
        """The candidates and the canvas and probe batch they all run at."""
        dev, report = self.dev, self.report
        self.camera = _camera_canvas(self.ground_truth, self.model_file) if canvas == "auto" else None
        # CPU: one image per core, which the ONNX Runtime engine runs in parallel (engine/ort.py)
        self.probe = probe_batch or (1 if self.limits.objective == "latency" else
                                     min(usable_cores(), 8) if dev.type == "cpu" else 32)
        self.candidates = search_space(dev.type, compile=compile, int8=int8, budget_s=self.limits.budget_s)
        if self.camera is not None:
            (h, w), hw = self.camera
            for cand in self.candidates:  # one canvas for all: the guard compares like with like, a compile is one shape
                cand.options = cand.options.replace(imgsz=hw)
            report.canvas = ((h, w), hw)
            report.notes.append(
                f"the validation images are all {w}x{h}: every candidate ran on their least-padded canvas, "
                f"{hw[0]}x{hw[1]}, and the artifact keeps it (inputs of other shapes are letterboxed into it; "
                f"--canvas square tunes on the model's square canvas)")
        self.reference = self.candidates[0]

    def run(self, cand: Candidate) -> None:
        from yolotune.pipeline.detector import Detector

        if self.stop is not None and self.stop.is_set():
            raise KeyboardInterrupt  # asked to stop: the search ends here with what it has
        left = self.limits.left_s()
        if not cand.reference and left - SWEEP_RESERVE_S < cand.est_cost_s:
            cand.result = {"status": "skipped", "reason": f"budget: {left:.0f} s left ({SWEEP_RESERVE_S:.0f} s of it "
                                                          f"kept for the batch sizes), needs ~{cand.est_cost_s:.0f} s"}
            return
        self.say(f"candidate {self.candidates.index(cand) + 1} of {len(self.candidates)}: {cand.name}")
        started = time.perf_counter()
        try:
            file = self.files.for_candidate(cand)
            cand.result = _evaluate(Detector, cand, file, self.dev, self.val, self.probe, self.reference,
                                    self.limits.max_drop)
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

    def run_all(self, refine: bool) -> None:
        """Every candidate (a fallback only when what it stands in for failed), then the winner's own options:
        input size and top-k cap, each guarded like any candidate. Ctrl-C ends the search with what it has."""
        from yolotune.pipeline.detector import Detector

        try:
            by_name = {c.name: c for c in self.candidates}
            controlled = False
            for cand in list(self.candidates):
                if cand.fallback_for and by_name[cand.fallback_for].result.get("status") != "failed":
                    cand.result = {"status": "not needed", "reason": f"{cand.fallback_for} did not fail"}
                    continue
                if cand.calibration in LATER_CALIBRATIONS and not controlled:
                    # INT8 within the bound first: the other calibrations only where budget is left
                    self.int8_control()
                    controlled = True
                self.run(cand)
            if not controlled:
                self.int8_control()
            valid = self.valid()
            if refine and valid:
                winner = max(valid, key=self.limits.key)
                with Detector(str(winner.result["model_file"]), winner.options.replace(device=str(self.dev), batch=1)) as det:
                    hw, stride = det.imgsz, det.stride
                for cand in refinements(winner, hw, stride):
                    self.candidates.append(cand)
                    self.run(cand)
        except KeyboardInterrupt:
            self.report.interrupted = True

    def int8_control(self) -> None:
        """Where every INT8 candidate lost more accuracy than the bound: the one that lost least, with its most
        sensitive layers back in float until it fits (tune/int8_control.py), guarded like any candidate."""
        int8 = [c for c in self.candidates if c.calibration and not c.refines and "drop_points" in c.result]
        if not int8 or any(c.result.get("status") == "passed" for c in int8):
            return
        base = min(int8, key=lambda c: c.result["drop_points"])
        cand = Candidate(f"{base.engine} int8 mixed ({base.calibration})", base.options, engine=base.engine,
                         calibration=base.calibration, est_cost_s=60)
        self.candidates.append(cand)
        left = self.limits.left_s()
        if left - SWEEP_RESERVE_S < cand.est_cost_s:
            cand.result = {"status": "skipped", "reason": f"budget: {left:.0f} s left, accuracy control needs "
                                                          f"~{cand.est_cost_s:.0f} s"}
            return
        try:
            size = hw_of(cand.options.imgsz or 640)
            batches = self.files.batches(size)
            control = accuracy_control(self.files.onnx(size), self.files.ranges(cand.calibration, size),
                                       cand.calibration, len(batches), lambda path: self._drop(cand, path),
                                       self.limits.max_drop, batches[:CONTROL_IMAGES], self.work, self.say)
        except Exception as e:  # reported like a candidate that cannot be built
            cand.result = {"status": "failed", "reason": f"accuracy control: {type(e).__name__}: {str(e)[:300]}"}
            return
        self.files.mixed[cand.name] = control.model
        self.run(cand)
        cand.result["int8_control"] = control.to_dict()
        cand.result["all_int8_images_per_s"] = base.result.get("images_per_s")

    def _drop(self, cand: Candidate, model: Path) -> float:
        """mAP50-95 points ``model`` loses on the validation data, run as ``cand``'s options would run it."""
        from yolotune.data.validate import accuracy_guard
        from yolotune.pipeline.detector import Detector

        opts = cand.options.replace(device=str(self.dev), batch=self.probe, conf=0.001, rect=False)
        with Detector(str(model), opts) as det:
            return accuracy_guard(det, self.val, max_drop_points=self.limits.max_drop,
                                  baseline=self.reference.result["_guard_baseline"]).drop_points

    def speeds_at(self, batch: int) -> None:
        """Every passing candidate's images/s at the batch the winner was chosen at (the probe batch can rank
        them differently: INT8 gains more at larger batches on a CPU)."""
        from yolotune.pipeline.detector import Detector

        for c in self.valid():
            if c.result.get("probe_batch") == batch:
                c.result["images_per_s_at_chosen_batch"] = c.result["images_per_s"]
                continue
            try:
                with Detector(str(c.result["model_file"]), c.options.replace(device=str(self.dev), batch=batch)) as det:
                    (m,) = _timed_as_deployed(det, self.val, [det.engine.fixed_batch or batch])
                c.result["images_per_s_at_chosen_batch"] = m.images_per_s
            except Exception as e:  # noqa: BLE001  (reported, not fatal: the winner is saved all the same)
                c.result["images_per_s_at_chosen_batch_error"] = f"{type(e).__name__}: {str(e)[:200]}"

    def valid(self) -> list[Candidate]:
        return [c for c in self.candidates if c.result.get("status") == "passed"]

    def finish(self, out: Path) -> None:
        """Pick the winner and its batch, and save the artifact with the report; or report why nothing was saved."""
        from yolotune.pipeline.detector import Detector

        report, limits, dev = self.report, self.limits, self.dev
        report.candidates = self.candidates
        valid = self.valid()
        if report.interrupted:
            report.notes.append("interrupted: the best candidate measured so far was saved" if valid else
                                "interrupted before any candidate passed the accuracy guard; nothing saved")
        elif not valid:
            report.notes.append("no candidate passed the accuracy guard; nothing saved")
        if not valid:
            write_report(out, report)
            return
        best = max(valid, key=limits.key)
        parent = {c.name: c for c in self.candidates}.get(best.refines) if best.refines else None
        if parent is not None and parent in valid and not _clearly_better(best, parent, limits.objective):
            # a variant (smaller input, fewer NMS candidates) must win clearly, not by run-to-run noise
            report.notes.append(f"{best.name} measured within {REFINE_MARGIN - 1:.0%} of {parent.name}: kept {parent.name}")
            best = parent
        self.say(f"batch sizes for {best.name}")
        batch, sweep = choose_batch(Detector, best, dev, limits.objective, limits.latency_ms, limits.target_fps,
                                    limits.memory_mib, limits.max_batch, limits.left_s() if not report.interrupted else 0,
                                    _images(self.val))
        if not report.interrupted and limits.left_s() > 0:
            self.say(f"every passing candidate at batch {batch}")
            self.speeds_at(batch)
        options = best.options.replace(batch=batch)
        if options.compile and options.rect is False and self.camera is None:
            report.notes.append(
                "the compiled engine was guarded and saved on the square canvas (one canvas, one compile); for inputs "
                "of one aspect ratio, `yolotune predict ARTIFACT --rect` compiles their canvas once more and saves it "
                "in the artifact (benchmarks/results/e2e_diag_h100.md)")
        if dev.type == "cuda":
            options = options.replace(cudnn_benchmark=cudnn_autotune(batch))
        report.chosen = Chosen(best.name, options, best.result)
        report.batch_sweep = sweep
        report.summary = summary(report.device, self.reference, best, batch, sweep)
        report.levers = levers(self.candidates, sweep)
        if best.engine == "onnxruntime" and batch > 1 and not report.interrupted:
            report.levers.append(split_lever(Detector, best, dev, batch, _images(self.val)))
        report.search_s = round(time.perf_counter() - limits.started, 1)
        write_artifact(out, best.result["model_file"], options,
                       {"tuned_on": report.device, "objective": limits.objective, "report": "report.json"})
        self.say("reloading the artifact")
        report.reload_s = _reload_seconds(Detector, out, dev)
        write_report(out, report)


def _clearly_better(a: Candidate, b: Candidate, objective: str) -> bool:
    if objective == "latency":
        return a.result["latency_ms_b1"] * REFINE_MARGIN <= b.result["latency_ms_b1"]
    return a.result["images_per_s"] >= REFINE_MARGIN * b.result["images_per_s"]


def _timed_as_deployed(det, val: Path, batches: list[int]) -> list:
    """``det`` timed as the artifact will run (measure_batch on letterboxed validation pictures, the default
    threshold) at each of ``batches``. CPU timings on shared machines swing widely: longer windows there (a median
    of three each way)."""
    h, w = det.imgsz
    window = 0.2 if det.device.type == "cuda" else 0.8
    with as_deployed(det):
        sample = letterboxed_images(_images(val), (h, w), det.device)
        return [measure_batch(det, b, h, w, repeats=3, min_seconds=window, sample=sample) for b in batches]


def _evaluate(Detector, cand: Candidate, file: Path, dev, val: Path, probe: int, reference: Candidate,
              max_drop: float) -> dict:
    """Speed (probe batch and batch 1), memory, and accuracy against labels or the reference."""
    from yolotune.data.validate import accuracy_guard, guard_baseline

    # Every candidate sees the same square canvas: the guard then compares engines and precisions on identical
    # inputs, and an engine meets one input shape, not one per aspect ratio of the validation images (each new
    # shape costs cuDNN autotuning and, for graph engines, a capture).
    rect = False if cand.options.rect is None else cand.options.rect
    with Detector(str(file), cand.options.replace(device=str(dev), batch=probe, conf=0.001, rect=rect)) as det:
        batches = [det.engine.fixed_batch or probe] + ([1] if probe != 1 else [])
        timed = _timed_as_deployed(det, val, batches)
        speed, latency = timed[0], timed[-1]  # at batch 1 the probe is the latency
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


def _reload_seconds(Detector, out: Path, dev) -> float:
    """Seconds from Detector(artifact) to the first detections of a batch (graph capture / compile cache included)."""
    import numpy as np

    start = time.perf_counter()
    with Detector(str(out), device=str(dev)) as det:
        det.detect([np.zeros((720, 1280, 3), np.uint8)] * min(det.batch, 4))
    return round(time.perf_counter() - start, 2)
