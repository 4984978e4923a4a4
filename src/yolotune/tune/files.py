"""The model file each candidate runs: the user's model, an ONNX export at the candidate's input size, or an INT8
model quantized from it. Exports and calibration images are made once and shared between candidates."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from yolotune.tune.candidates import Candidate
from yolotune.tune.int8 import calibrate, calibration_batches, quantize_with_ranges

CALIBRATION_IMAGES = 32  # calibration images an INT8 candidate is calibrated on (int8_calibration_cpu.json)


class CandidateFiles:
    def __init__(self, model_file: Path, work: Path, calibration_images: Callable[[], list[str]]):
        self.model_file, self.work = model_file, work
        self._calibration_images = calibration_images
        self._cal: list[str] | None = None
        self._onnx: dict[tuple[int, int], Path] = {}
        self._int8: dict[tuple, Path] = {}
        self._ranges: dict[tuple, object] = {}  # calibrated once per method and size, then reused
        self._batches: dict[tuple[int, int], list] = {}
        self.mixed: dict[str, Path] = {}  # accuracy-controlled models, by candidate name (tune/int8_control.py)

    def for_candidate(self, cand: Candidate) -> Path:
        if cand.name in self.mixed:
            return self.mixed[cand.name]
        if cand.engine not in ("onnxruntime", "openvino"):  # both run the ONNX export
            return self.model_file
        size = hw_of(cand.options.imgsz or 640)
        onnx = self.onnx(size)
        if not cand.calibration:
            return onnx
        key = (cand.calibration, size)
        if key not in self._int8:
            out = self.work / f"int8-{cand.calibration}-{size[0]}x{size[1]}.onnx"
            self._int8[key] = quantize_with_ranges(onnx, out, self.ranges(cand.calibration, size), cand.calibration,
                                                   len(self.batches(size)))
        return self._int8[key]

    def batches(self, size: tuple[int, int]) -> list:
        """The calibration inputs at ``size``: letterboxed as the pipeline does (generated images unless given)."""
        if size not in self._batches:
            if self._cal is None:  # generated only when an INT8 candidate needs it
                self._cal = self._calibration_images()
            self._batches[size] = calibration_batches(self._cal, size, limit=CALIBRATION_IMAGES)
        return self._batches[size]

    def ranges(self, method: str, size: tuple[int, int]):
        key = (method, size)
        if key not in self._ranges:
            self._ranges[key] = calibrate(self.onnx(size), self.batches(size), method, self.work)
        return self._ranges[key]

    def onnx(self, size: tuple[int, int]) -> Path:
        from yolotune.models import load_model
        from yolotune.models.export import export_onnx

        if self.model_file.suffix == ".onnx":
            return self.model_file
        if size not in self._onnx:
            self._onnx[size] = export_onnx(load_model(str(self.model_file)), self.work / f"model-fp32-{size[0]}x{size[1]}.onnx",
                                           imgsz=size, dynamic_batch=True)
        return self._onnx[size]


def hw_of(imgsz) -> tuple[int, int]:
    return (imgsz, imgsz) if isinstance(imgsz, int) else (int(imgsz[0]), int(imgsz[1]))
