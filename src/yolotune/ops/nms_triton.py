"""Triton kernels for exact batched greedy NMS on the GPU (fixed shapes, CUDA-graph capturable).

Stage 1 (``_suppression_mask_kernel``): for every image, every candidate row i and every 64-column word w,
a 64-bit word whose bit c says "candidate i suppresses candidate 64*w + c" (IoU > threshold, same class,
ranked later). Tiles outside the image's valid candidates or wholly at or below the diagonal are skipped.
Stage 2 (``_greedy_scan_kernel``): one program per image walks its candidates in score order, keeping a
candidate unless a kept one already suppressed it, ORing in the kept candidate's row; it stops after
``max_det`` kept boxes. Under ``TRITON_INTERPRET=1`` the same kernels run on the CPU (the tests use this).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_ROWS_PER_TILE = 64


@triton.jit
def _suppression_mask_kernel(
    boxes_ptr,  # [B, K, 4] float32
    classes_ptr,  # [B, K] int32
    counts_ptr,  # [B] int32
    mask_ptr,  # [B, K, W] int64
    K,
    W,
    iou_threshold,
    ROWS: tl.constexpr,
):
    b = tl.program_id(0)
    row_block = tl.program_id(1)
    word = tl.program_id(2)
    n = tl.load(counts_ptr + b)
    r0 = row_block * ROWS
    # Skip rows with no valid candidate and tiles whose columns are all at or left of the diagonal.
    if (r0 < n) & (word * 64 + 63 > r0):
        rows = r0 + tl.arange(0, ROWS)
        bit = tl.arange(0, 64)
        cols = word * 64 + bit
        row_ok = rows < n
        col_ok = cols < n
        rbase = boxes_ptr + (b * K + rows) * 4
        cbase = boxes_ptr + (b * K + cols) * 4
        rx1 = tl.load(rbase + 0, mask=row_ok, other=0.0)
        ry1 = tl.load(rbase + 1, mask=row_ok, other=0.0)
        rx2 = tl.load(rbase + 2, mask=row_ok, other=0.0)
        ry2 = tl.load(rbase + 3, mask=row_ok, other=0.0)
        cx1 = tl.load(cbase + 0, mask=col_ok, other=0.0)
        cy1 = tl.load(cbase + 1, mask=col_ok, other=0.0)
        cx2 = tl.load(cbase + 2, mask=col_ok, other=0.0)
        cy2 = tl.load(cbase + 3, mask=col_ok, other=0.0)
        rcls = tl.load(classes_ptr + b * K + rows, mask=row_ok, other=-1)
        ccls = tl.load(classes_ptr + b * K + cols, mask=col_ok, other=-2)
        w = tl.maximum(tl.minimum(rx2[:, None], cx2[None, :]) - tl.maximum(rx1[:, None], cx1[None, :]), 0.0)
        h = tl.maximum(tl.minimum(ry2[:, None], cy2[None, :]) - tl.maximum(ry1[:, None], cy1[None, :]), 0.0)
        inter = w * h
        area_r = (rx2 - rx1) * (ry2 - ry1)
        area_c = (cx2 - cx1) * (cy2 - cy1)
        iou = tl.math.div_rn(inter, area_r[:, None] + area_c[None, :] - inter)  # IEEE division, as torchvision
        hit = (iou > iou_threshold) & (cols[None, :] > rows[:, None]) & (rcls[:, None] == ccls[None, :])
        hit = hit & row_ok[:, None] & col_ok[None, :]
        # Distinct powers of two never carry, so their sum is their bitwise OR.
        bits = tl.sum(hit.to(tl.int64) << bit.to(tl.int64)[None, :], axis=1)
        tl.store(mask_ptr + (b * K + rows) * W + word, bits, mask=rows < K)


@triton.jit
def _greedy_scan_kernel(
    mask_ptr,  # [B, K, W] int64
    counts_ptr,  # [B] int32
    keep_ptr,  # [B, MAX_DET] int64 out
    kept_ptr,  # [B] int32 out
    K,
    W,
    MAX_DET,
    W_BLOCK: tl.constexpr,
):
    b = tl.program_id(0)
    n = tl.load(counts_ptr + b)
    words = tl.arange(0, W_BLOCK)
    removed = tl.zeros([W_BLOCK], dtype=tl.int64)
    kept = 0
    i = 0
    while (i < n) & (kept < MAX_DET):
        w = i // 64
        word = tl.sum(tl.where(words == w, removed, 0), axis=0)
        if ((word >> (i % 64).to(tl.int64)) & 1) == 0:
            tl.store(keep_ptr + b * MAX_DET + kept, i.to(tl.int64))
            kept += 1
            # Words left of i's word hold only already-decided candidates (and may be unwritten): skip them.
            row = tl.load(mask_ptr + (b * K + i) * W + words, mask=(words >= w) & (words < W), other=0)
            removed = removed | row
        i += 1
    tl.store(kept_ptr + b, kept)


def nms_triton(
    boxes: torch.Tensor, classes: torch.Tensor, counts: torch.Tensor, iou_threshold: float, max_det: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched greedy NMS with Triton; same contract as ``yolotune.ops.nms.batched_nms``."""
    B, K = boxes.shape[:2]
    W = triton.cdiv(K, 64)
    boxes = boxes.float().contiguous()
    classes = classes.to(torch.int32).contiguous()
    counts = counts.to(torch.int32).contiguous()
    mask = torch.empty(B, K, W, dtype=torch.int64, device=boxes.device)  # unwritten words are never read
    keep = torch.zeros(B, max_det, dtype=torch.int64, device=boxes.device)
    kept = torch.empty(B, dtype=torch.int32, device=boxes.device)
    if B == 0 or K == 0 or max_det == 0:
        return keep, kept.zero_()
    _suppression_mask_kernel[(B, triton.cdiv(K, _ROWS_PER_TILE), W)](
        boxes, classes, counts, mask, K, W, float(iou_threshold), ROWS=_ROWS_PER_TILE, num_warps=4
    )
    _greedy_scan_kernel[(B,)](mask, counts, keep, kept, K, W, max_det, W_BLOCK=triton.next_power_of_2(W), num_warps=1)
    return keep, kept


@triton.jit
def _finalize_kernel(
    boxes_ptr,  # [B, K, 4] float32, canvas xyxy
    scores_ptr,  # [B, K] float32
    classes_ptr,  # [B, K] int64
    keep_ptr,  # [B, MAX_DET] int64 positions into K
    kept_ptr,  # [B] int32
    geometry_ptr,  # [B, 6] float32: gain x, gain y, left, top, height, width
    out_ptr,  # [B, MAX_DET, 6] float32
    K,
    MAX_DET,
    BLOCK: tl.constexpr,
):
    b = tl.program_id(0)
    j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    in_range = j < MAX_DET
    valid = in_range & (j < tl.load(kept_ptr + b))
    idx = tl.load(keep_ptr + b * MAX_DET + j, mask=valid, other=0)
    gx = tl.load(geometry_ptr + b * 6 + 0)
    gy = tl.load(geometry_ptr + b * 6 + 1)
    left = tl.load(geometry_ptr + b * 6 + 2)
    top = tl.load(geometry_ptr + b * 6 + 3)
    height = tl.load(geometry_ptr + b * 6 + 4)
    width = tl.load(geometry_ptr + b * 6 + 5)
    base = boxes_ptr + (b * K + idx) * 4
    # same arithmetic as ops.boxes.boxes_to_original: (v - pad) / gain, clipped to the image
    x1 = tl.minimum(tl.maximum(tl.math.div_rn(tl.load(base + 0, mask=valid, other=0.0) - left, gx), 0.0), width)
    y1 = tl.minimum(tl.maximum(tl.math.div_rn(tl.load(base + 1, mask=valid, other=0.0) - top, gy), 0.0), height)
    x2 = tl.minimum(tl.maximum(tl.math.div_rn(tl.load(base + 2, mask=valid, other=0.0) - left, gx), 0.0), width)
    y2 = tl.minimum(tl.maximum(tl.math.div_rn(tl.load(base + 3, mask=valid, other=0.0) - top, gy), 0.0), height)
    score = tl.load(scores_ptr + b * K + idx, mask=valid, other=0.0)
    cls = tl.load(classes_ptr + b * K + idx, mask=valid, other=0).to(tl.float32)
    zero = tl.zeros([BLOCK], dtype=tl.float32)
    row = out_ptr + (b * MAX_DET + j) * 6
    tl.store(row + 0, tl.where(valid, x1, zero), mask=in_range)
    tl.store(row + 1, tl.where(valid, y1, zero), mask=in_range)
    tl.store(row + 2, tl.where(valid, x2, zero), mask=in_range)
    tl.store(row + 3, tl.where(valid, y2, zero), mask=in_range)
    tl.store(row + 4, tl.where(valid, score, zero), mask=in_range)
    tl.store(row + 5, tl.where(valid, cls, zero), mask=in_range)


def finalize_triton(boxes, scores, classes, keep, kept, geometry) -> torch.Tensor:
    """Kept rows -> [B, max_det, 6] in source pixels, zero-padded: one kernel instead of a dozen small ones."""
    B, K = scores.shape
    max_det = keep.shape[1]
    out = torch.empty(B, max_det, 6, dtype=torch.float32, device=boxes.device)
    if B == 0 or max_det == 0:
        return out
    block = min(triton.next_power_of_2(max_det), 512)
    _finalize_kernel[(B, triton.cdiv(max_det, block))](
        boxes.float().contiguous(), scores.float().contiguous(), classes.to(torch.int64).contiguous(),
        keep.contiguous(), kept.to(torch.int32).contiguous(), geometry.float().contiguous(), out, K, max_det, BLOCK=block,
    )
    return out
