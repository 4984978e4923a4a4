"""COCO-style detection accuracy: mAP50-95, mAP50, per-class AP, and precision/recall at an operating threshold.

faster-coco-eval computes the COCO metrics (pycocotools is the fallback, and the reference in the tests). The
accuracy guard compares a candidate pipeline's detections with ground truth, or, when a user has no labels, with a
reference model's detections used as pseudo-labels.
"""

from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import dataclass, field

import numpy as np


@dataclass
class DetectionMetrics:
    map50_95: float
    map50: float
    per_class_ap: dict[str, float] = field(default_factory=dict)  # AP50-95 per category name
    precision: float = 0.0  # at ``conf`` and IoU 0.5
    recall: float = 0.0
    conf: float = 0.25
    backend: str = ""

    def to_dict(self) -> dict:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def _coco_api(backend: str):
    if backend in ("auto", "faster"):
        try:
            from faster_coco_eval import COCO, COCOeval_faster

            return COCO, COCOeval_faster, "faster-coco-eval"
        except ImportError:
            if backend == "faster":
                raise
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    return COCO, COCOeval, "pycocotools"


def coco_metrics(ground_truth: dict, results: list[dict], conf: float = 0.25, backend: str = "auto") -> DetectionMetrics:
    """Metrics of COCO ``results`` (image_id, category_id, bbox xywh, score) against a COCO ``ground_truth`` dict."""
    COCO, COCOeval, name = _coco_api(backend)
    gt = COCO()
    gt.dataset = copy.deepcopy(ground_truth)
    gt.dataset.setdefault("info", {})
    for a in gt.dataset.get("annotations", []):
        a.setdefault("iscrowd", 0)
        a.setdefault("area", a["bbox"][2] * a["bbox"][3])
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        if not results:
            return DetectionMetrics(0.0, 0.0, {c["name"]: 0.0 for c in ground_truth["categories"]}, 0.0, 0.0, conf, name)
        dt = gt.loadRes(copy.deepcopy(results))
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = np.asarray(ev.eval["precision"])  # [iou, recall, class, area, max_dets]
    per_class = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        per_class[gt.cats[cat_id]["name"]] = float(p.mean()) if p.size else 0.0
    prec, rec = precision_recall(ground_truth, results, conf)
    return DetectionMetrics(float(ev.stats[0]), float(ev.stats[1]), per_class, prec, rec, conf, name)


def precision_recall(ground_truth: dict, results: list[dict], conf: float, iou: float = 0.5) -> tuple[float, float]:
    """Greedy one-to-one matching (same class, IoU >= ``iou``) of detections scoring >= ``conf``."""
    from yolotune.ops.boxes import pairwise_iou
    import torch

    gts: dict[tuple[int, int], list] = {}
    for a in ground_truth.get("annotations", []):
        gts.setdefault((a["image_id"], a["category_id"]), []).append(a["bbox"])
    dets: dict[tuple[int, int], list] = {}
    for r in results:
        if r["score"] >= conf:
            dets.setdefault((r["image_id"], r["category_id"]), []).append((r["score"], r["bbox"]))
    tp = 0
    n_det = sum(len(v) for v in dets.values())
    n_gt = sum(len(v) for v in gts.values())
    for key, ds in dets.items():
        g = gts.get(key)
        if not g:
            continue
        ds.sort(key=lambda d: -d[0])
        xyxy = lambda b: [b[0], b[1], b[0] + b[2], b[1] + b[3]]  # noqa: E731
        ious = pairwise_iou(torch.tensor([xyxy(d[1]) for d in ds], dtype=torch.float64),
                            torch.tensor([xyxy(b) for b in g], dtype=torch.float64)).numpy()
        used = np.zeros(len(g), bool)
        for i in range(len(ds)):
            cand = np.where((ious[i] >= iou) & ~used)[0]
            if len(cand):
                used[cand[np.argmax(ious[i, cand])]] = True
                tp += 1
    return (tp / n_det if n_det else 0.0), (tp / n_gt if n_gt else 0.0)


def detections_as_ground_truth(reference: list[dict], images: list[dict], categories: list[dict], conf: float = 0.25) -> dict:
    """Pseudo-labels: a reference model's detections above ``conf`` as a COCO ground truth (for unlabeled data)."""
    anns = [{"id": i + 1, "image_id": r["image_id"], "category_id": r["category_id"], "bbox": r["bbox"],
             "area": r["bbox"][2] * r["bbox"][3], "iscrowd": 0} for i, r in enumerate(x for x in reference if x["score"] >= conf)]
    return {"images": images, "categories": categories, "annotations": anns}
