"""Exact greedy class-aware NMS for a whole batch at once: no Python loop over images or boxes.

Input: per image, candidates sorted by score (descending) whose first ``counts[b]`` rows are valid.
Output: for each image, the positions of the first ``max_det`` boxes greedy NMS keeps, padded, plus a count.

Two implementations compute the same function:
- ``nms_torch``: vectorised fixed-point iteration over the suppression matrix (any device; used on CPU).
  With S[i, j] = "box i (higher score) suppresses box j", greedy NMS is the unique fixed point of
  keep[j] = valid[j] and not any_i(S[i, j] and keep[i]) because S is strictly upper-triangular; Jacobi
  iteration from keep = valid reaches it in at most (longest suppression chain + 1) steps, usually a handful.
- ``nms_triton``: a bitmask kernel (all pairs in parallel) and a per-image sequential scan that stops at
  ``max_det`` kept boxes; fixed shapes, no host synchronisation, so it is captured in the CUDA graph.
"""

from __future__ import annotations

import torch

from yolotune.ops.boxes import pairwise_iou

# Bound the [chunk, K, K] suppression matrix of the torch path (elements), so a dense batch cannot blow memory.
_TORCH_NMS_MAX_ELEMENTS = 1 << 26


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
        backend: "auto" (Triton on CUDA when available, else torch), "torch" or "triton".

    Returns:
        keep: [B, max_det] int64 positions into K of kept boxes, in score order; rows past ``kept`` are 0.
        kept: [B] int32 number of kept boxes per image (<= max_det).
    """
    if backend == "auto":
        backend = "triton" if boxes.is_cuda and triton_available() else "torch"
    if backend == "triton":
        from yolotune.ops.nms_triton import nms_triton

        return nms_triton(boxes, classes, counts, iou_threshold, max_det)
    return nms_torch(boxes, classes, counts, iou_threshold, max_det)


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def nms_torch(
    boxes: torch.Tensor, classes: torch.Tensor, counts: torch.Tensor, iou_threshold: float, max_det: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference-exact batched greedy NMS in plain torch (see module docstring)."""
    B = boxes.shape[0]
    device = boxes.device
    keep_out = torch.zeros(B, max_det, dtype=torch.int64, device=device)
    kept_out = torch.zeros(B, dtype=torch.int32, device=device)
    k = int(counts.max()) if B else 0
    if k == 0 or max_det == 0:
        return keep_out, kept_out
    chunk = max(1, _TORCH_NMS_MAX_ELEMENTS // (k * k))
    for start in range(0, B, chunk):  # chunks bound memory; each chunk is one vectorised pass
        sl = slice(start, min(B, start + chunk))
        keep = _greedy_keep_mask(boxes[sl, :k].float(), classes[sl, :k], counts[sl], iou_threshold)
        keep_out[sl], kept_out[sl] = _first_kept(keep, max_det)
    return keep_out, kept_out


def _greedy_keep_mask(boxes: torch.Tensor, classes: torch.Tensor, counts: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """[b, k] bool: which candidates greedy NMS keeps (fixed-point iteration, exact)."""
    b, k = boxes.shape[:2]
    position = torch.arange(k, device=boxes.device)
    valid = position[None, :] < counts[:, None]
    later = position[None, :] > position[:, None]  # S[i, j] only for j ranked after i
    suppress = (pairwise_iou(boxes, boxes) > iou_threshold) & later & (classes[:, :, None] == classes[:, None, :])
    suppress &= valid[:, :, None] & valid[:, None, :]
    suppress_f = suppress.to(torch.float32)
    keep = valid
    for _ in range(k + 1):  # converges in (longest suppression chain + 1) steps, at most k + 1
        hit = torch.bmm(keep.to(torch.float32)[:, None, :], suppress_f)[:, 0] > 0
        new_keep = valid & ~hit
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return keep


def _first_kept(keep: torch.Tensor, max_det: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the first ``max_det`` True entries per row, padded with 0, and their count."""
    b, k = keep.shape
    rank = keep.cumsum(dim=1) - 1
    slot = torch.where(keep & (rank < max_det), rank, torch.full_like(rank, max_det))
    out = torch.zeros(b, max_det + 1, dtype=torch.int64, device=keep.device)
    out.scatter_(1, slot, torch.arange(k, device=keep.device).expand(b, k).contiguous())
    kept = keep.sum(dim=1).clamp(max=max_det).to(torch.int32)
    return out[:, :max_det], kept
