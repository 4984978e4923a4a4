"""Box conversions and the mapping from letterboxed input back to original image pixels."""

from __future__ import annotations

import torch


def xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """Centre-size boxes [..., 4] to corner boxes [..., 4]."""
    xy, wh = boxes[..., :2], boxes[..., 2:4] / 2
    return torch.cat((xy - wh, xy + wh), dim=-1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def pairwise_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every box in a [..., N, 4] with every box in b [..., M, 4] -> [..., N, M].

    Same float operations as torchvision's NMS kernels (intersection over area_a + area_b - intersection), so
    threshold decisions agree bit for bit.
    """
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:4], b[..., None, :, 2:4])
    wh = (rb - lt).clamp_(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (box_area(a)[..., :, None] + box_area(b)[..., None, :] - inter)


def boxes_to_original(boxes: torch.Tensor, geometry: torch.Tensor) -> torch.Tensor:
    """Map xyxy boxes [B, M, 4] on the letterboxed canvas back to source pixels and clip to the image.

    ``geometry`` is [B, 6]: gain x, gain y, left, top, source height, source width (see ``geometry_tensor``).
    Same arithmetic as Ultralytics' ``scale_boxes``: subtract the padding, divide by the per-axis gain.
    """
    # Slices only: list indexing would build a CPU index tensor, which CUDA graph capture forbids.
    gain = geometry[:, None, 0:2].repeat(1, 1, 2)  # gx, gy, gx, gy
    offset = geometry[:, None, 2:4].repeat(1, 1, 2)  # left, top, left, top
    out = (boxes - offset) / gain
    limit = geometry[:, None, 4:6].flip(-1).repeat(1, 1, 2)  # w, h, w, h
    return torch.minimum(out.clamp(min=0), limit)
