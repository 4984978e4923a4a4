"""INT8 that keeps its accuracy: the layers that lose most to 8 bits go back to float until the guard passes.

As OpenVINO NNCF's ``quantize_with_accuracy_control`` does: quantize everything, and if the validation mAP drops by
more than the budget, rank the model's layer groups (a module of the YOLO graph, or a branch of the Detect head) by
how much of the quantized model's output error each removes when it alone stays float, measured against the FP32
outputs on a few calibration images; then find the fewest of the most sensitive groups that must stay float for
the drop to fit (a binary search, each step validated). Calibration runs once (``tune/int8.py calibrate``); every
variant reuses its ranges.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from yolotune.tune.int8 import _head_nodes_to_exclude, quantize_with_ranges

SCORE_FLOOR = 0.1  # anchors whose FP32 class score passes this are the ones the output error is measured on


@dataclass
class LayerGroup:
    name: str  # "model.6" (a module), "model.22 cv3.1" (a branch of the Detect head)
    nodes: list[str]  # its quantizable nodes (the head's decoding is float anyway)
    macs_share: float = 0.0  # its convolutions' share of the model's multiply-accumulates
    sensitivity: float = 0.0  # how much of the all-INT8 output error goes when it alone stays float

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("nodes")
        return {**d, "nodes": len(self.nodes), "macs_share": round(self.macs_share, 4),
                "sensitivity": round(self.sensitivity, 5)}


@dataclass
class ControlResult:
    model: Path  # the mixed model: INT8 but ``float_groups``
    float_groups: list[LayerGroup]
    drop_points: float  # its mAP50-95 drop on the validation data
    int8_drop_points: float  # everything quantized
    steps: list[dict] = field(default_factory=list)  # each validated variant: groups kept float, drop
    ranking: list[LayerGroup] = field(default_factory=list)  # every group, most sensitive first

    def to_dict(self) -> dict:
        return {"float_groups": [g.to_dict() for g in self.float_groups], "drop_points": round(self.drop_points, 3),
                "int8_drop_points": round(self.int8_drop_points, 3), "steps": self.steps,
                "ranking": [g.to_dict() for g in self.ranking]}


def layer_groups(model: onnx.ModelProto) -> list[LayerGroup]:
    """The quantizable nodes by YOLO module (``/model.N/``), the Detect head by branch (``cv2.k``, ``cv3.k``);
    groups without a convolution are left out (concat and upsample cost little and lose little)."""
    head_decoding = set(_head_nodes_to_exclude(model))
    groups: dict[str, list] = {}
    for n in model.graph.node:
        m = re.search(r"/model\.(\d+)/(?:(cv\d+)\.(\d+)/)?", n.name)
        if not m or n.name in head_decoding:
            continue
        groups.setdefault(f"model.{m.group(1)}", []).append(n)
    head = max((int(k.split(".")[1]) for k in groups), default=None)
    out: list[LayerGroup] = []
    for name, nodes in groups.items():
        if not any(n.op_type == "Conv" for n in nodes):
            continue
        if head is not None and name == f"model.{head}":  # the head: one group per branch
            branches: dict[str, list] = {}
            for n in nodes:
                b = re.search(r"/model\.\d+/(cv\d+\.\d+)/", n.name)
                branches.setdefault(b.group(1) if b else "rest", []).append(n)
            out += [LayerGroup(f"{name} {b}", [n.name for n in ns]) for b, ns in branches.items()
                    if any(n.op_type == "Conv" for n in ns)]
        else:
            out.append(LayerGroup(name, [n.name for n in nodes]))
    _macs_shares(model, out)
    return out


def _macs_shares(model: onnx.ModelProto, groups: list[LayerGroup]) -> None:
    """Each group's share of the convolutions' multiply-accumulates (weights x output pixels, from shape
    inference at the model's input size)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in
              list(inferred.graph.value_info) + list(inferred.graph.output)}
    weights = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
    macs: dict[str, float] = {}
    for n in model.graph.node:
        if n.op_type == "Conv" and len(n.input) > 1:
            out = shapes.get(n.output[0]) or []
            pixels = int(np.prod(out[2:])) if len(out) >= 4 and all(out[2:]) else 1
            macs[n.name] = weights.get(n.input[1], 0) * pixels
    total = sum(macs.values()) or 1.0
    for g in groups:
        g.macs_share = sum(macs.get(n, 0) for n in g.nodes) / total


def output_error(outputs: np.ndarray, reference: np.ndarray, classes_from: int = 4) -> float:
    """How far a model's raw head outputs [B, 4 + classes, anchors] (xywh boxes, class scores) are from the FP32
    reference's, where it matters: on the anchors the reference scores above SCORE_FLOOR (its 100 best where none
    does), the mean change of each anchor's class scores (largest of its classes) plus the mean 1 - IoU of its box
    with the reference's."""
    scores = reference[:, classes_from:].max(axis=1)  # [B, anchors]
    mask = scores > SCORE_FLOOR
    if not mask.any():
        top = np.argsort(scores, axis=None)[-100:]
        mask = np.zeros(scores.size, bool)
        mask[top] = True
        mask = mask.reshape(scores.shape)
    ref = np.moveaxis(reference, 1, 2)[mask].astype(np.float64)  # [n, 4 + classes]
    got = np.moveaxis(outputs, 1, 2)[mask].astype(np.float64)
    cls = np.abs(got[:, classes_from:] - ref[:, classes_from:]).max(axis=1)
    return float(cls.mean() + (1.0 - _iou_xywh(got[:, :4], ref[:, :4])).mean())


def _iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of paired boxes given as centre x, centre y, width, height."""
    a1, a2 = a[:, :2] - a[:, 2:] / 2, a[:, :2] + a[:, 2:] / 2
    b1, b2 = b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2
    inter = np.clip(np.minimum(a2, b2) - np.maximum(a1, b1), 0, None).prod(axis=1)
    union = np.clip(a[:, 2:], 0, None).prod(axis=1) + np.clip(b[:, 2:], 0, None).prod(axis=1) - inter
    return inter / np.maximum(union, 1e-9)


def run_onnx(model: Path, images: list[np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x})[0] for x in images])


def rank_groups(fp32: Path, ranges, method: str, n_calibration: int, groups: list[LayerGroup],
                images: list[np.ndarray], work: Path, say: Callable[[str], None] = lambda _m: None) -> list[LayerGroup]:
    """Each group's sensitivity: the output error of the all-INT8 model minus that of the model where this group
    alone stays float (on ``images``, against FP32); most sensitive first."""
    reference = run_onnx(fp32, images)
    full = quantize_with_ranges(fp32, work / f"int8-{method}-all.onnx", ranges, method, n_calibration)
    base = output_error(run_onnx(full, images), reference)
    for k, g in enumerate(groups):
        say(f"INT8 layer sensitivity: {g.name} ({k + 1} of {len(groups)})")
        variant = quantize_with_ranges(fp32, work / f"int8-{method}-but-{k}.onnx", ranges, method, n_calibration,
                                       keep_float=g.nodes)
        g.sensitivity = base - output_error(run_onnx(variant, images), reference)
        variant.unlink(missing_ok=True)
    return sorted(groups, key=lambda g: g.sensitivity, reverse=True)


def accuracy_control(fp32: Path, ranges, method: str, n_calibration: int, validate: Callable[[Path], float],
                     max_drop: float, images: list[np.ndarray], work: Path,
                     say: Callable[[str], None] = lambda _m: None) -> ControlResult:
    """The mixed model with the fewest layer groups in float whose mAP drop (``validate(model) -> points``) is
    within ``max_drop``. Everything INT8 first; when that fails, groups ranked (``rank_groups``), then the number
    of the most sensitive kept float found by a binary search, each step validated."""
    full = quantize_with_ranges(fp32, work / f"int8-{method}-control-0.onnx", ranges, method, n_calibration)
    int8_drop = validate(full)
    steps = [{"float_groups": 0, "drop_points": round(int8_drop, 3)}]
    if int8_drop <= max_drop:
        return ControlResult(full, [], int8_drop, int8_drop, steps)
    ranking = rank_groups(fp32, ranges, method, n_calibration, layer_groups(onnx.load(str(fp32))), images, work, say)
    useful = [g for g in ranking if g.sensitivity > 0] or ranking
    lo, hi = 1, len(useful)
    best: tuple[Path, float, int] | None = None
    while lo <= hi:
        k = (lo + hi) // 2
        say(f"INT8 accuracy control: {k} most sensitive layer groups in float")
        model = quantize_with_ranges(fp32, work / f"int8-{method}-control-{k}.onnx", ranges, method, n_calibration,
                                     keep_float=[n for g in useful[:k] for n in g.nodes])
        drop = validate(model)
        steps.append({"float_groups": k, "groups": [g.name for g in useful[:k]], "drop_points": round(drop, 3)})
        if drop <= max_drop:
            best, hi = (model, drop, k), k - 1
        else:
            lo = k + 1
    if best is None:  # even the useful groups all in float do not fit: the last tried is what there is
        k = len(useful)
        model = work / f"int8-{method}-control-{k}.onnx"
        return ControlResult(model, useful[:k], steps[-1]["drop_points"], int8_drop, steps, ranking)
    model, drop, k = best
    return ControlResult(model, useful[:k], drop, int8_drop, steps, ranking)
