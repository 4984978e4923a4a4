"""The model file each candidate runs: the user's model, an ONNX export at the candidate's input size, or an INT8
model quantized from it. Exports and calibration images are made once and shared between candidates."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from yolotune.tune.candidates import Candidate
from yolotune.tune.int8 import calibration_batches, quantize_int8


class CandidateFiles:
    def __init__(self, model_file: Path, work: Path, calibration_images: Callable[[], list[str]]):
        self.model_file, self.work = model_file, work
        self._calibration_images = calibration_images
        self._cal: list[str] | None = None
        self._onnx: dict[tuple[int, int], Path] = {}
        self._int8: dict[tuple, Path] = {}

    def for_candidate(self, cand: Candidate) -> Path:
        if cand.engine != "onnxruntime":
            return self.model_file
        size = _hw(cand.options.imgsz or 640)
        onnx = self.onnx(size)
        if not cand.calibration:
            return onnx
        key = (cand.calibration, size)
        if key not in self._int8:
            if self._cal is None:  # generated only when an INT8 candidate needs it
                self._cal = self._calibration_images()
            batches = calibration_batches(self._cal, size, limit=32)
            out = self.work / f"int8-{cand.calibration}-{size[0]}x{size[1]}.onnx"
            self._int8[key] = quantize_int8(onnx, out, batches, cand.calibration)
        return self._int8[key]

    def onnx(self, size: tuple[int, int]) -> Path:
        from yolotune.models import load_model
        from yolotune.models.export import export_onnx

        if self.model_file.suffix == ".onnx":
            return self.model_file
        if size not in self._onnx:
            self._onnx[size] = export_onnx(load_model(str(self.model_file)), self.work / f"model-fp32-{size[0]}x{size[1]}.onnx",
                                           imgsz=size, dynamic_batch=True)
        return self._onnx[size]


def _hw(imgsz) -> tuple[int, int]:
    return (imgsz, imgsz) if isinstance(imgsz, int) else (int(imgsz[0]), int(imgsz[1]))
