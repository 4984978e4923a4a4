"""Ultralytics detection checkpoints (.pt) and model configs (.yaml, random init) through the optional extra.

Ultralytics is AGPL-3.0, so it is imported here only, and only when such a model is asked for.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from yolotune.models import register_loader
from yolotune.models.spec import LoadedModel, ModelLoadError, ModelSpec, no_such_model

_INSTALL_HINT = "pip install 'yolotune[ultralytics]'"


class RawDetectionOutput(torch.nn.Module):
    """Calls an Ultralytics DetectionModel and returns only the decoded head output tensor.

    In eval mode the Detect head returns (y, raw feature dict); y is [B, 4+nc, N] or, for end-to-end heads,
    [B, max_det, 6]. The feature dict is dropped so graphs and exports see a single tensor.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model(x)
        return y[0] if isinstance(y, (tuple, list)) else y


def _import_yolo():
    os.environ.setdefault("YOLO_OFFLINE", "1")  # never reach the network from a loader
    os.environ.setdefault("YOLO_VERBOSE", "False")
    try:
        from ultralytics import YOLO
    except ImportError as e:
        raise ModelLoadError(f"Ultralytics models (.pt, .yaml) need the optional extra: {_INSTALL_HINT} ({e})") from e
    return YOLO


# Heads of the other tasks, all subclasses of Detect (or not detection at all): by class name, whatever the version.
_OTHER_TASK_HEADS = {"Segment": "segment", "Pose": "pose", "OBB": "obb", "Classify": "classify",
                     "RTDETRDecoder": "rtdetr"}


def _other_task(yolo) -> str | None:
    """The task of a model that is not plain detection (None for detection), from Ultralytics' task and the head's
    class (YOLO26's heads carry a number: Pose26)."""
    task = getattr(yolo, "task", None)
    if task not in (None, "detect"):
        return str(task)
    head = yolo.model.model[-1] if hasattr(yolo.model, "model") else None
    for base in type(head).__mro__ if head is not None else ():
        kind = _OTHER_TASK_HEADS.get(base.__name__.rstrip("0123456789"))
        if kind is not None:
            return kind
    return None


@register_loader(".pt", ".yaml")
def load_ultralytics(
    path: str, seed: int = 0, class_bias: float | None = None, end2end: bool | None = None, trust_model: bool = False,
    **_: object
) -> LoadedModel:
    """Load an Ultralytics detection model.

    A .yaml builds the architecture with random weights drawn from ``seed`` (for speed work: speed does not depend
    on weights). Ultralytics' built-in config names such as ``yolov8n.yaml`` resolve without a file on disk.
    ``class_bias`` overwrites the classification biases of the Detect head: a random-init model then scores many
    anchors above the threshold, which makes NMS and agreement checks meaningful without trained weights.
    ``end2end``: for heads with an NMS-free one-to-one branch (YOLOv10, YOLO26), True selects it (output
    [B, max_det, 6], no NMS), False the one-to-many branch + NMS; None keeps the checkpoint's choice.
    A .pt is first read by the weights-only unpickler (models/safe_load.py) unless ``trust_model``.
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".pt" and not Path(path).is_file():
        # Never let Ultralytics treat a missing .pt as a hub name to download.
        raise no_such_model(path)
    YOLO = _import_yolo()
    if suffix == ".pt" and not (trust_model or os.environ.get("YOLOTUNE_TRUST_MODEL") == "1"):
        from yolotune.models.safe_load import check_checkpoint

        check_checkpoint(path)
    torch.manual_seed(seed)
    try:
        yolo = YOLO(path)  # the task comes from the file: a pose or segmentation config is not detection
    except Exception as e:  # Ultralytics raises many types for bad files; report them all the same way
        raise ModelLoadError(f"{path}: not a loadable Ultralytics model ({type(e).__name__}: {e})") from e
    other = _other_task(yolo)
    if other is not None:
        raise ModelLoadError(f"{path}: yolotune runs detection models only; this is a {other} model")
    model = yolo.model.float().eval()
    head = model.model[-1]
    if suffix == ".yaml":
        _calibrate_batchnorm(model, seed)
    if class_bias is not None:
        _set_class_bias(head, class_bias)
    if end2end is not None:
        if end2end and getattr(head, "one2one_cv2", None) is None:
            raise ModelLoadError(f"{path}: has no NMS-free (one-to-one) head; end2end=True is not available")
        if hasattr(head, "one2one_cv2"):
            head.end2end = end2end
    end2end = bool(getattr(head, "end2end", False))
    args = getattr(model, "args", {}) or {}
    imgsz = args.get("imgsz", 640) if isinstance(args, dict) else 640
    imgsz = (imgsz, imgsz) if isinstance(imgsz, int) else tuple(imgsz)
    names = {int(k): str(v) for k, v in dict(model.names).items()}
    spec = ModelSpec(
        path=path,
        format="ultralytics",
        names=names,
        layout="end2end" if end2end else "v8",
        stride=int(max(model.stride)),
        imgsz=imgsz,
        extra={"yaml": suffix == ".yaml", "max_det": int(getattr(head, "max_det", 300))},
    )
    return LoadedModel(spec=spec, runnable=RawDetectionOutput(model))


@torch.no_grad()
def _calibrate_batchnorm(model: torch.nn.Module, seed: int) -> None:
    """Re-estimate BatchNorm statistics of a random-init model on generated photo-like images.

    With default running statistics, activations of a random network shrink layer by layer until every anchor
    gets the same score; estimated statistics keep unit-scale activations, so scores depend on the image.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    import numpy as np

    from yolotune.data.samples import photo_like

    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(2):
        batch = np.stack([photo_like(rng, 320, 320) for _ in range(4)])
        model(torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255)
    model.eval()
    for m in norms:
        m.momentum = 0.03
        # Channels with tiny variance would be amplified enormously, making the network chaotic (a one-grey-level
        # input change moved boxes by ~50 px); flooring at the layer's median variance keeps it smooth.
        m.running_var.clamp_(min=float(m.running_var.median()))


def _set_class_bias(head: torch.nn.Module, value: float, weight_scale: float = 2.0) -> None:
    """Set the last conv bias of every classification branch (one2many and one2one) to ``value``.

    The weights are scaled too, so logits spread over several units and a bias of about -2 gives a realistic
    density of candidates whatever the architecture.
    """
    branches = [getattr(head, name, None) for name in ("cv3", "one2one_cv3")]
    for branch in filter(None, branches):
        for level in branch:
            last = level[-1]
            if getattr(last, "bias", None) is not None:
                last.weight.data[: head.nc] *= weight_scale
                last.bias.data[: head.nc] = value


def save_ultralytics_checkpoint(model: LoadedModel, path: str | Path) -> Path:
    """Write an Ultralytics-loadable .pt of a model loaded from .pt/.yaml (e.g. a random-init one for speed work),
    so Ultralytics and yolotune can be compared on the very same weights."""
    import ultralytics

    net = model.runnable.model
    net.args = {"imgsz": model.spec.imgsz[0], "task": "detect"}
    torch.save({"model": net, "train_args": dict(net.args), "version": ultralytics.__version__}, str(path))
    return Path(path)
