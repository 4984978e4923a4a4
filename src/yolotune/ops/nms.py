"""Exact greedy class-aware NMS for a whole batch at once: no Python loop over images or boxes.

Input: per image, candidates sorted by score (descending) whose first ``counts[b]`` rows are valid.
Output: for each image, the positions of the first ``max_det`` boxes greedy NMS keeps, padded, plus a count.

Two implementations compute the same function:
- ``nms_torchvision``: one ``torchvision.ops.nms`` call for all candidates of the batch, each (image, class) group
  moved to its own region by a float64 offset (float64 so the offsets do not quantise coordinates, which the usual
  float32 ``class * max_wh`` trick does), then a vectorised regroup per image. Any device; used on CPU.
- ``nms_triton``: a bitmask kernel (all pairs in parallel) and a per-image sequential scan that stops at
  ``max_det`` kept boxes; fixed shapes, no host synchronisation, so it is captured in the CUDA graph.
- ``nms_per_image``: the common hand-written way (Ultralytics' ``non_max_suppression`` does this): a Python loop over
  images, one ``torchvision.ops.batched_nms`` call and one host synchronisation each. Same result; kept as the
  baseline the profiler measures ("nms": "loop").
"""

from __future__ import annotations

import torch

NMS_BACKENDS = ("auto", "triton", "torchvision", "loop")


def batched_nms(
    boxes: torch.Tensor,
    classes: torch.Tensor,
    counts: torch.Tensor,
    iou_threshold: float,
    max_det: int,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy NMS per image and per class for a batch.

    Args:
        boxes: [B, K, 4] xyxy, each image's candidates sorted by descending score.
        classes: [B, K] integer class ids (pass zeros for class-agnostic NMS).
        counts: [B] number of valid candidates per image (a prefix of the K rows).
        backend: "auto" (Triton on CUDA when available, else torchvision), "torchvision", "triton" or "loop".

    Returns:
        keep: [B, max_det] int64 positions into K of kept boxes, in score order; rows past ``kept`` are 0.
        kept: [B] int32 number of kept boxes per image (<= max_det).
    """
    if backend == "auto":
        backend = "triton" if boxes.is_cuda and triton_available() else "torchvision"
    if backend == "triton":
        from yolotune.ops.nms_triton import nms_triton

        return nms_triton(boxes, classes, counts, iou_threshold, max_det)
    if backend == "torchvision":
        return nms_torchvision(boxes, classes, counts, iou_threshold, max_det)
    if backend == "loop":
        return nms_per_image(boxes, classes, counts, iou_threshold, max_det)
    raise ValueError(f"unknown NMS backend {backend!r}")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def nms_torchvision(
    boxes: torch.Tensor, classes: torch.Tensor, counts: torch.Tensor, iou_threshold: float, max_det: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched greedy NMS with one torchvision call (see module docstring)."""
    from torchvision.ops import nms

    B, K = boxes.shape[:2]
    device = boxes.device
    keep_out = torch.zeros(B, max_det, dtype=torch.int64, device=device)
    valid = torch.arange(K, device=device)[None, :] < counts[:, None]
    image, position = valid.nonzero(as_tuple=True)  # image-major, score order within an image
    if image.numel() == 0 or max_det == 0:
        return keep_out, torch.zeros(B, dtype=torch.int32, device=device)
    cand = boxes[image, position].double()
    cls = classes[image, position].long()
    group = image * (int(cls.max()) + 1) + cls
    low = cand.min()
    span = cand.max() - low + 1  # > any box extent, so boxes of different groups never overlap
    shifted = cand - low + (group.double() * span)[:, None]
    # Scores only need to reproduce the order within a group, which the position already is (stable sort).
    kept_idx = nms(shifted, -position.double(), iou_threshold)
    k_image, k_position = image[kept_idx], position[kept_idx]
    order = torch.argsort(k_image * K + k_position)
    k_image, k_position = k_image[order], k_position[order]
    per_image = torch.bincount(k_image, minlength=B)
    first = torch.cumsum(per_image, 0) - per_image
    rank = torch.arange(k_image.numel(), device=device) - first[k_image]
    take = rank < max_det
    keep_out[k_image[take], rank[take]] = k_position[take]
    return keep_out, per_image.clamp(max=max_det).to(torch.int32)


def nms_per_image(
    boxes: torch.Tensor, classes: torch.Tensor, counts: torch.Tensor, iou_threshold: float, max_det: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image loop of ``torchvision.ops.batched_nms`` (see module docstring): same output as the batched kernels."""
    from torchvision.ops import batched_nms as tv_batched_nms

    B, K = boxes.shape[:2]
    keep_out = torch.zeros(B, max_det, dtype=torch.int64, device=boxes.device)
    kept = torch.zeros(B, dtype=torch.int32, device=boxes.device)
    for b, n in enumerate(counts.tolist()):  # one host sync per batch, then one NMS launch sequence per image
        if n == 0 or max_det == 0:
            continue
        position = torch.arange(n, device=boxes.device)
        keep = tv_batched_nms(boxes[b, :n].double(), -position.double(), classes[b, :n], iou_threshold)[:max_det]
        keep_out[b, : keep.numel()] = keep
        kept[b] = keep.numel()
    return keep_out, kept
