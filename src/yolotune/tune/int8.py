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

CALIBRATION_METHODS = ("minmax", "entropy", "percentile", "mse")


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


def calibrate(fp32_onnx: str | Path, calibration: list[np.ndarray], method: str = "minmax", work: Path | None = None):
    """Each quantizable tensor's range over ``calibration`` (ONNX Runtime's ``TensorsData``), by ``method``:
    minmax, entropy, percentile (ONNX Runtime's), or mse: from each tensor's histogram, the range whose 8-bit
    steps and clipping lose the least in mean squared error (``mse_range``). Made once; ``quantize_with_ranges``
    then quantizes with any set of layers left in float without calibrating again."""
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, create_calibrator

    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method must be one of {CALIBRATION_METHODS}, not {method!r}")
    if not calibration:
        raise CalibrationError("empty calibration set")
    input_name = onnx.load(str(fp32_onnx), load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        """A few calibration batches at a time: ONNX Runtime's calibrators keep every tensor of every batch they are
        given before reducing them, ~0.3 GB per 640x640 image for yolov8n."""

        def __init__(self, batches):
            self.it = iter(batches)

        def get_next(self):
            batch = next(self.it, None)
            return None if batch is None else {input_name: batch}

    calibrate_as = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                    "percentile": CalibrationMethod.Percentile, "mse": CalibrationMethod.Entropy}[method]
    options = {"minmax": {"moving_average": True}, "percentile": {"percentile": 99.999},
               "mse": {"num_bins": 512}}.get(method, {})
    with tempfile.TemporaryDirectory(prefix="yolotune-calibrate-", dir=work) as tmp:
        calibrator = create_calibrator(Path(fp32_onnx), None, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=calibrate_as, extra_options=options)
        step = _chunk(len(calibration))
        for start in range(0, len(calibration), step):
            with _quiet():
                calibrator.collect_data(Reader(calibration[start : start + step]))
        if method != "mse":
            with _quiet():
                return calibrator.compute_data()
        ranges = {name: mse_range(hist, edges, lo, hi)
                  for name, (hist, edges, lo, hi, _t) in calibrator.collector.histogram_dict.items()}
    return TensorsData(calibrate_as, {name: TensorData(lowest=np.float32(lo), highest=np.float32(hi))
                                      for name, (lo, hi) in ranges.items()})


def mse_range(hist: np.ndarray, edges: np.ndarray, lowest: float, highest: float, levels: int = 256,
              candidates: int = 64) -> tuple[float, float]:
    """The [low, high] range of 8-bit (``levels`` steps) asymmetric quantization that loses the least in mean
    squared error over a histogram (counts ``hist`` over ``edges``) of a tensor seen between ``lowest`` and
    ``highest``: each end clipped inwards over ``candidates`` steps. Values inside lose a step's rounding
    (step^2 / 12), values outside their distance to the clipped end."""
    centers = (edges[:-1] + edges[1:]) / 2
    counts = hist.astype(np.float64)
    lowest, highest = float(min(lowest, 0.0)), float(max(highest, 0.0))
    if counts.sum() == 0 or highest - lowest <= 0:
        return lowest, highest
    fractions = np.geomspace(1.0, 0.02, candidates)  # outliers can sit far above the bulk
    best, best_err = (lowest, highest), np.inf
    for lo in lowest * fractions[:: max(1, candidates // 8)]:  # the low end matters less (SiLU's is small)
        highs = highest * fractions[:, None]  # [candidates, 1]
        step = (highs - lo) / (levels - 1)
        clipped = np.clip(centers[None, :], lo, highs)
        err = ((centers[None, :] - clipped) ** 2 + step**2 / 12) @ counts
        k = int(np.argmin(err))
        if err[k] < best_err:
            best, best_err = (float(lo), float(highs[k, 0])), float(err[k])
    return best


def quantize_with_ranges(fp32_onnx: str | Path, out: str | Path, ranges, method: str, n_calibration: int,
                         per_channel: bool = True, keep_float: Iterable[str] = (),
                         op_types: list[str] | None = None) -> Path:
    """Write an INT8 QDQ model of ``fp32_onnx`` with calibrated ``ranges`` (``calibrate``); the head's decoding
    and the nodes named in ``keep_float`` stay in float."""
    import tempfile

    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    model = onnx.load(str(fp32_onnx))
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="yolotune-quantize-", dir=out.parent) as tmp, _without_preprocessing_advice():
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(ranges, cache)
        quantize_static(
            str(fp32_onnx), str(out), None, quant_format=QuantFormat.QDQ, per_channel=per_channel,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=ranges.calibration_method,
            nodes_to_exclude=_head_nodes_to_exclude(model) + list(keep_float), op_types_to_quantize=op_types,
            calibration_cache_path=str(cache))
    # keep Ultralytics-style metadata (names, stride, imgsz) so the loader describes the model as before
    q = onnx.load(str(out))
    del q.metadata_props[:]
    for prop in model.metadata_props:
        q.metadata_props.add(key=prop.key, value=prop.value)
    kept = len(list(keep_float))
    q.metadata_props.add(key="quantization", value=f"int8 qdq per_channel={per_channel} calibration={method} "
                                                    f"n={n_calibration}" + (f" float_nodes={kept}" if kept else ""))
    onnx.save(q, str(out))
    return out


def quantize_int8(fp32_onnx: str | Path, out: str | Path, calibration: list[np.ndarray], method: str = "minmax",
                  per_channel: bool = True, also_exclude: Iterable[str] = (), op_types: list[str] | None = None) -> Path:
    """Write an INT8 QDQ model of ``fp32_onnx`` calibrated on ``calibration`` with ``method``. ``also_exclude``
    (node names) and ``op_types`` (the only operator types to quantize) are for experiments
    (benchmarks/int8_variants.py)."""
    ranges = calibrate(fp32_onnx, calibration, method, Path(out).parent)
    return quantize_with_ranges(fp32_onnx, out, ranges, method, len(calibration), per_channel, also_exclude, op_types)


@contextlib.contextmanager
def _quiet():
    """ONNX Runtime's histogram calibrators print a line per computation."""
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        yield


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
