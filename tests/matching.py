"""Match two sets of detections: same class, IoU >= 0.9, score within 0.02 (greedy, one-to-one)."""

from __future__ import annotations

import numpy as np
import torch

from yolotune.ops.boxes import pairwise_iou


def matched_fraction(ref: list[tuple[np.ndarray, np.ndarray, np.ndarray]], got: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                     iou: float = 0.9, score_tol: float = 0.02) -> tuple[float, int]:
    """Fraction of reference boxes (over all images) that have a partner in ``got``; also the reference count."""
    total = matched = 0
    for (rb, rs, rc), (gb, gs, gc) in zip(ref, got):
        total += len(rs)
        if len(rs) == 0 or len(gs) == 0:
            continue
        ious = pairwise_iou(torch.as_tensor(rb, dtype=torch.float64), torch.as_tensor(gb, dtype=torch.float64)).numpy()
        ok = (ious >= iou) & (rc[:, None] == gc[None, :]) & (np.abs(rs[:, None] - gs[None, :]) <= score_tol)
        used = np.zeros(len(gs), bool)
        for i in np.argsort(-rs):
            cand = np.where(ok[i] & ~used)[0]
            if len(cand):
                used[cand[np.argmax(ious[i, cand])]] = True
                matched += 1
    return (matched / total if total else 1.0), total


def stream_rows(jsonl) -> tuple[list[int], list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """A stream's detections.jsonl (``run``'s output): its frame numbers, and each frame's (boxes, scores, class
    ids) as matched_fraction takes them (event records left out)."""
    import json
    from pathlib import Path

    rows = [json.loads(x) for x in Path(jsonl).read_text().splitlines()]
    rows = [r for r in rows if "frame" in r]
    dets = [(np.array([d["box"] for d in r["detections"]], np.float64).reshape(-1, 4),
             np.array([d["score"] for d in r["detections"]]), np.array([d["class_id"] for d in r["detections"]]))
            for r in rows]
    return [r["frame"] for r in rows], dets
