"""INT8 ONNX Runtime models by static quantization (QDQ, per-channel weights), calibrated on real images.

The head's decoding (DFL softmax and its expectation convolution, anchors, box arithmetic, sigmoid, concat) stays
in float: box coordinates in pixels and class probabilities lose far more to 8-bit steps than convolution
activations do; quantizing the DFL convolution too doubled the accuracy lost
(benchmarks/results/optimize/int8_variants_cpu.json). The head's feature convolutions are quantized like the rest.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


class CalibrationError(ValueError):
    """The calibration set cannot be used (empty, unreadable)."""


def calibration_batches(images: Iterable[str], imgsz: tuple[int, int], limit: int = 64) -> list[np.ndarray]:
    """[1, 3, H, W] float32 inputs letterboxed exactly as the pipeline does, from up to ``limit`` readable images."""
    import torch

    from yolotune.profile.sweep import letterboxed_images

    batch = letterboxed_images(images, imgsz, torch.device("cpu"), limit)  # unreadable files are skipped
    if batch is None:
        raise CalibrationError("no readable calibration images (pass a folder of JPEG/PNG images)")
    return [batch[i : i + 1].numpy() for i in range(len(batch))]


def _head_nodes_to_exclude(model: onnx.ModelProto) -> list[str]:
    """The decoding nodes of the last (detection) module ``model.N``: all but its feature convolutions and their
    SiLU activations (``/act/``; the DFL expectation is a convolution too, over softmax probabilities, and stays
    float). Keeping those activations quantized spares a dequantize / float SiLU / quantize round trip after each
    of the head's 12 feature convolutions (optimize/int8_variants_cpu.json)."""
    indices = [int(m.group(1)) for n in model.graph.node for m in [re.search(r"/model\.(\d+)/", n.name)] if m]
    if not indices:
        return []
    head = f"/model.{max(indices)}/"
    return [n.name for n in model.graph.node
            if head in n.name and "/act/" not in n.name and (n.op_type != "Conv" or "/dfl/" in n.name)]


CALIBRATION_CHUNK = 4  # batches collected at once: memory bounded whatever the calibration set's size


def quantize_int8(fp32_onnx: str | Path, out: str | Path, calibration: list[np.ndarray], method: str = "minmax",
                  per_channel: bool = True, also_exclude: Iterable[str] = (), op_types: list[str] | None = None) -> Path:
    """Write an INT8 QDQ model of ``fp32_onnx`` calibrated on ``calibration`` with ``method``. ``also_exclude``
    (node names) and ``op_types`` (the only operator types to quantize) are for experiments
    (benchmarks/int8_variants.py)."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method must be one of {CALIBRATION_METHODS}, not {method!r}")
    if not calibration:
        raise CalibrationError("empty calibration set")
    model = onnx.load(str(fp32_onnx))
    input_name = model.graph.input[0].name

    class Reader(CalibrationDataReader):
        """The calibration batches, a few at a time (``set_range``): ONNX Runtime's calibrators keep every tensor
        of every batch they are given before reducing them, ~0.3 GB per 640x640 image for yolov8n."""

        def __init__(self):
            self.set_range(0, len(calibration))

        def __len__(self):
            return len(calibration)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.it = iter(calibration[start_index:end_index])

        def get_next(self):
            batch = next(self.it, None)
            return None if batch is None else {input_name: batch}

    calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
    out = Path(out)
    with _without_preprocessing_advice():
        quantize_static(
            str(fp32_onnx), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=calibrate,
            nodes_to_exclude=_head_nodes_to_exclude(model) + list(also_exclude), op_types_to_quantize=op_types,
            # CalibStridedMinMax: collect per chunk of batches, for every method (ranges and histograms are merged)
            extra_options={"CalibMovingAverage": method == "minmax", "CalibPercentile": 99.999,
                           "CalibStridedMinMax": _chunk(len(calibration))},
        )
    # keep Ultralytics-style metadata (names, stride, imgsz) so the loader describes the model as before
    q = onnx.load(str(out))
    del q.metadata_props[:]
    for prop in model.metadata_props:
        q.metadata_props.add(key=prop.key, value=prop.value)
    q.metadata_props.add(key="quantization", value=f"int8 qdq per_channel={per_channel} calibration={method} n={len(calibration)}")
    onnx.save(q, str(out))
    return out


@contextlib.contextmanager
def _without_preprocessing_advice():
    """ONNX Runtime logs "Please consider to run pre-processing before quantization" on the root logger for every
    model it quantizes: advice to someone calling it by hand. yolotune quantizes the exported graph as it is and
    lets the accuracy guard judge the result, so to its user the line is noise."""
    def advice(record: logging.LogRecord) -> bool:
        return not (record.pathname.endswith(os.path.join("onnxruntime", "quantization", "quantize.py"))
                    and "pre-processing" in str(record.msg))

    root = logging.getLogger()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


def _chunk(n: int, most: int = CALIBRATION_CHUNK) -> int:
    """The largest number of batches up to ``most`` that divides ``n`` (ONNX Runtime needs equal chunks)."""
    return max(d for d in range(1, min(most, n) + 1) if n % d == 0)
