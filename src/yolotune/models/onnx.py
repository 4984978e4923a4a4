"""ONNX detection exports through onnxruntime: layout detected from output shapes and Ultralytics metadata."""

from __future__ import annotations

import ast
from pathlib import Path

from yolotune.models import register_loader
from yolotune.models.spec import LoadedModel, ModelLoadError, ModelSpec, no_such_model

_UNSUPPORTED_TASKS = {"segment", "pose", "obb", "classify", "semantic", "depth"}
# An end-to-end head returns at most this many rows; a raw v5 head returns thousands of anchors.
_MAX_END2END_ROWS = 1000


def _dim(d) -> int | None:
    return d if isinstance(d, int) and d > 0 else None


def detect_layout(output_shape: list, metadata: dict[str, str], nc_hint: int | None) -> tuple[str, int | None]:
    """("v8" | "v5" | "end2end", number of classes or None) for a rank-3 output shape, or ModelLoadError text."""
    _, a, b = (_dim(d) for d in output_shape)
    if str(metadata.get("end2end", "")).lower() == "true" or (b == 6 and a is not None and a <= _MAX_END2END_ROWS and nc_hint != 1):
        if b not in (6, None):
            raise ValueError(f"end-to-end output should be [B, max_det, 6], found {output_shape}")
        return "end2end", nc_hint
    if a is not None and (b is None or a < b):
        return "v8", a - 4
    if b is not None and (a is None or b < a):
        return "v5", b - 5
    if nc_hint is not None and a == 4 + nc_hint:
        return "v8", nc_hint
    raise ValueError(f"cannot tell the detection layout of output shape {output_shape}")


@register_loader(".onnx")
def load_onnx(path: str, providers: list[str] | None = None, threads: int | None = None, split_batch: bool = True,
              **_: object) -> LoadedModel:
    """Open an ONNX detection export with onnxruntime and describe it. ``threads``: ONNX Runtime's threads per run
    (default: every core); ``split_batch``: on the CPU, a batch runs as one single-threaded part per core
    (engine/ort.py)."""
    if not Path(path).is_file():
        raise no_such_model(path)
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(path, sess_options=opts, providers=providers or ["CPUExecutionProvider"])
    except Exception as e:
        raise ModelLoadError(f"{path}: onnxruntime cannot load it ({type(e).__name__}: {str(e)[:300]})") from e
    meta = dict(session.get_modelmeta().custom_metadata_map)
    task = meta.get("task")
    if task in _UNSUPPORTED_TASKS:
        raise ModelLoadError(f"{path}: yolotune runs detection models only; this is a {task} model (from its metadata)")
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        found = [(i.name, i.shape) for i in inputs]
        raise ModelLoadError(f"{path}: expected one image input [B, 3, H, W], found {found}")
    out_shapes = [o.shape for o in outputs]
    if len(outputs) != 1:
        raise ModelLoadError(
            f"{path}: expected one detection output, found {len(outputs)} outputs {out_shapes} "
            "(segmentation and pose exports are not supported)"
        )
    if len(out_shapes[0]) != 3:
        kind = " (looks like a classification model)" if len(out_shapes[0]) == 2 else ""
        raise ModelLoadError(f"{path}: expected a rank-3 detection output, found shape {out_shapes[0]}{kind}")
    names = _parse_names(meta.get("names"))
    in_shape = inputs[0].shape
    out_shape = out_shapes[0]
    if any(_dim(d) is None for d in out_shape[1:]):
        out_shape = _probe_output_shape(session, in_shape, _parse_imgsz(meta.get("imgsz")), path)
    try:
        layout, nc = detect_layout(out_shape, meta, len(names) if names else None)
    except ValueError as e:
        raise ModelLoadError(f"{path}: {e}") from e
    if task is None:  # no word of the task: a pose or other head would pass for detection with odd class counts
        _check_scores_are_probabilities(session, in_shape, _parse_imgsz(meta.get("imgsz")), layout, path)
    if not names:
        names = {i: str(i) for i in range(nc or 0)}
    fixed_hw = (_dim(in_shape[2]), _dim(in_shape[3]))
    fixed_hw = fixed_hw if None not in fixed_hw else None
    imgsz = _parse_imgsz(meta.get("imgsz")) or fixed_hw or (640, 640)
    spec = ModelSpec(
        path=path,
        format="onnx",
        names=names,
        layout=layout,
        stride=int(float(meta.get("stride", 32))),
        imgsz=tuple(imgsz),
        fixed_batch=_dim(in_shape[0]),
        fixed_hw=fixed_hw,
        input_dtype="float16" if "float16" in inputs[0].type else "float32",
        extra={"input_name": inputs[0].name, "output_shape": list(out_shape), "metadata": meta, "threads": threads,
               "split_batch": split_batch},
    )
    return LoadedModel(spec=spec, runnable=session)


def _probe_output_shape(session, in_shape: list, imgsz: tuple[int, int] | None, path: str) -> list:
    """Concrete output shape from one dummy run, for exports whose output dims are symbolic."""
    import numpy as np

    b = _dim(in_shape[0]) or 1
    h = _dim(in_shape[2]) or (imgsz or (640, 640))[0]
    w = _dim(in_shape[3]) or (imgsz or (640, 640))[1]
    dtype = np.float16 if "float16" in session.get_inputs()[0].type else np.float32
    try:
        out = session.run(None, {session.get_inputs()[0].name: np.zeros((b, 3, h, w), dtype)})[0]
    except Exception as e:
        raise ModelLoadError(f"{path}: could not run a {h}x{w} test input to learn its output shape ({str(e)[:200]})") from e
    return list(out.shape)


def _check_scores_are_probabilities(session, in_shape: list, imgsz: tuple[int, int] | None, layout: str, path: str) -> None:
    """A detection head's scores are probabilities; a pose head's keypoints (or a segmentation head's mask
    coefficients) in the same places are pixels or unbounded: refuse an export whose "scores" leave [0, 1] on a
    test picture."""
    import numpy as np

    b = _dim(in_shape[0]) or 1
    h = _dim(in_shape[2]) or (imgsz or (640, 640))[0]
    w = _dim(in_shape[3]) or (imgsz or (640, 640))[1]
    dtype = np.float16 if "float16" in session.get_inputs()[0].type else np.float32
    picture = np.random.default_rng(0).random((b, 3, h, w)).astype(dtype)
    try:
        out = np.asarray(session.run(None, {session.get_inputs()[0].name: picture})[0], np.float32)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"{path}: could not run a {h}x{w} test input ({str(e)[:200]})") from e
    scores = {"v8": out[:, 4:, :], "v5": out[:, :, 4:], "end2end": out[:, :, 4]}[layout]
    low, high = float(scores.min()), float(scores.max())
    if low < -1e-3 or high > 1 + 1e-3:
        raise ModelLoadError(f"{path}: yolotune runs detection models only; this export's class scores range "
                             f"{low:.1f} to {high:.1f} on a test picture, where a detection head gives probabilities "
                             "(a pose, segmentation or other head exported without metadata?)")


def _parse_names(text: str | None) -> dict[int, str]:
    if not text:
        return {}
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return {}
    if isinstance(value, dict):
        return {int(k): str(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return dict(enumerate(map(str, value)))
    return {}


def _parse_imgsz(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return (int(value[0]), int(value[1]))
    return None
