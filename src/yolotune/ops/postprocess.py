"""Raw YOLO head output -> fixed-size detections in source pixels, for a whole batch, on the device.

Every step keeps static shapes (sort, gather, a fixed top-k), so on CUDA it is captured in the same graph as
the model: the only host work per batch is one copy of [B, max_det, 6] + [B] back to pinned memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from yolotune.ops.boxes import boxes_to_original, xywh_to_xyxy
from yolotune.ops.nms import batched_nms, triton_available

LAYOUTS = ("v8", "v5", "end2end")


@dataclass(frozen=True)
class PostprocessConfig:
    """Thresholds and limits of post-processing.

    layout: "v8" raw [B, 4+nc, N] (xywh + class scores, YOLOv8/11), "v5" raw [B, N, 5+nc]
    (xywh + objectness + class scores), or "end2end" [B, max_det, 6] (xyxy, score, class; NMS-free heads).
    topk: candidates per image that enter NMS, highest scores first (Ultralytics' ``max_nms``).
    """

    layout: str = "v8"
    conf: float = 0.25
    iou: float = 0.7
    max_det: int = 300
    topk: int = 2048
    agnostic: bool = False
    nms_backend: str = "auto"

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown output layout {self.layout!r}; expected one of {LAYOUTS}")


def select_candidates(raw: torch.Tensor, cfg: PostprocessConfig):
    """Best class per prediction, sorted by score: boxes [B, K, 4] xyxy, scores [B, K], classes [B, K], counts [B]."""
    raw = raw.float()
    if cfg.layout == "v8":
        boxes = xywh_to_xyxy(raw[:, :4].transpose(1, 2))
        scores, classes = raw[:, 4:].max(dim=1)
    elif cfg.layout == "v5":
        boxes = xywh_to_xyxy(raw[..., :4])
        scores, classes = (raw[..., 5:] * raw[..., 4:5]).max(dim=-1)
    else:
        boxes, scores, classes = raw[..., :4], raw[..., 4], raw[..., 5].round().to(torch.int64)
    k = min(cfg.topk, scores.shape[1])
    # A stable sort breaks score ties by anchor index, so results are deterministic on every device.
    scores, order = torch.sort(scores, dim=1, descending=True, stable=True)
    scores, order = scores[:, :k], order[:, :k]
    boxes = boxes.gather(1, order[..., None].expand(-1, -1, 4))
    classes = classes.gather(1, order)
    counts = (scores > cfg.conf).sum(dim=1, dtype=torch.int32)
    return boxes, scores, classes, counts


def postprocess(raw: torch.Tensor, geometry: torch.Tensor, cfg: PostprocessConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Detections [B, max_det, 6] (x1, y1, x2, y2, score, class; rows past the count are zero) and counts [B]."""
    boxes, scores, classes, counts = select_candidates(raw, cfg)
    B = boxes.shape[0]
    if cfg.layout == "end2end":  # NMS-free head: the valid prefix already is the answer
        keep = torch.arange(cfg.max_det, device=boxes.device).clamp(max=boxes.shape[1] - 1).expand(B, -1)
        kept = counts.clamp(max=min(cfg.max_det, boxes.shape[1]))
    else:
        nms_classes = torch.zeros_like(classes) if cfg.agnostic else classes
        keep, kept = batched_nms(boxes, nms_classes, counts, cfg.iou, cfg.max_det, backend=cfg.nms_backend)
    return finalize(boxes, scores, classes, keep, kept, geometry, cfg.nms_backend), kept.to(torch.int32)


def finalize(boxes, scores, classes, keep, kept, geometry, backend: str = "auto") -> torch.Tensor:
    """Kept candidates -> [B, max_det, 6] (x1, y1, x2, y2, score, class) in source pixels, zero past ``kept``."""
    if backend in ("auto", "triton") and boxes.is_cuda and triton_available():
        from yolotune.ops.nms_triton import finalize_triton

        return finalize_triton(boxes, scores, classes, keep, kept, geometry)
    sel_boxes = boxes_to_original(boxes.gather(1, keep[..., None].expand(-1, -1, 4)), geometry)
    dets = torch.cat((sel_boxes, scores.gather(1, keep)[..., None], classes.gather(1, keep)[..., None].float()), dim=-1)
    valid = torch.arange(keep.shape[1], device=dets.device)[None, :] < kept[:, None]
    return dets * valid[..., None]
