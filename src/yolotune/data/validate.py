"""Validate a detection pipeline on a labelled dataset, and the accuracy guard that later optimisation steps use."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from yolotune.data.evaluate import DetectionMetrics, coco_metrics, detections_as_ground_truth


def load_dataset(data: str | Path) -> tuple[dict, Path]:
    """(COCO ground truth, images folder) of a dataset folder holding ``annotations.json`` and ``images/``.

    A plain folder of images (no labels) gives ground truth with images only (``annotations`` empty): the accuracy
    guard then uses a reference model's detections as pseudo-labels.
    """
    root = Path(data)
    ann = root / "annotations.json" if root.is_dir() else root
    if root.is_dir() and not ann.is_file():
        unlabelled = _image_folder(root)
        if unlabelled is not None:
            return unlabelled, root
    if not ann.is_file():
        raise FileNotFoundError(f"{data}: expected a folder with annotations.json and images/ (yolotune data synth writes one)")
    images = ann.parent / "images"
    return json.loads(ann.read_text()), images if images.is_dir() else ann.parent


def _image_folder(root: Path) -> dict | None:
    from PIL import Image

    images = []
    for path in sorted(p for p in root.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".webp")):
        try:
            with Image.open(path) as im:
                w, h = im.size
        except Exception:
            continue  # unreadable files cannot be scored; the guard runs on the readable ones
        images.append({"id": len(images) + 1, "file_name": path.name, "width": w, "height": h})
    return {"images": images, "annotations": [], "categories": []} if images else None


def predict_coco(detector, ground_truth: dict, images: Path) -> list[dict]:
    """The detector's detections on the dataset's images, as COCO results keyed by the dataset's image ids."""
    ids = {str(images / im["file_name"]): im["id"] for im in ground_truth["images"]}
    results = []
    for r in detector.predict(list(ids)):
        if r.ok:
            results.extend(r.to_coco(ids[r.source.path]))
    return results


def validate(detector, data: str | Path, conf: float = 0.25) -> DetectionMetrics:
    """COCO mAP50-95 / mAP50 / per-class AP of ``detector`` on ``data``; precision and recall at ``conf``.

    Build the detector with a low confidence threshold (Ultralytics validates at 0.001) so the whole
    precision-recall curve is seen; ``conf`` is the operating point reported as precision/recall.
    """
    gt, images = load_dataset(data)
    if not gt.get("annotations"):  # mAP against nothing is -1: say what is missing instead
        raise ValueError(f"{data}: no labels found (expected annotations.json, COCO format, beside images/; "
                         "`yolotune data synth` writes such a folder); a plain folder of images cannot be validated")
    return coco_metrics(gt, predict_coco(detector, gt, images), conf=conf)


@dataclass
class GuardResult:
    """A candidate's accuracy against labels (or a reference's pseudo-labels) and its drop from the reference."""

    candidate: DetectionMetrics
    reference_map50_95: float
    drop_points: float  # reference - candidate, in mAP50-95 points (x100)
    passed: bool
    against: str  # "labels" or "reference pseudo-labels"


@dataclass
class GuardBaseline:
    """What candidates are scored against, computed once: the ground truth (labels, or the reference's detections
    as pseudo-labels), the reference's mAP50-95 on it (None: labels and no reference) and its own detections."""

    ground_truth: dict
    images: Path
    map50_95: float | None
    against: str  # "labels" or "reference pseudo-labels"
    reference_predictions: list[dict]


def guard_baseline(reference, data: str | Path, conf: float = 0.25) -> GuardBaseline:
    """Run ``reference`` over ``data`` once; an optimisation search then guards every candidate against it.

    With labels, the reference is scored against them (a search used to run the reference again for each
    candidate: ~200 images more per candidate, the slowest engine of all). Without labels (``annotations``
    empty), the reference's detections above ``conf`` are the pseudo-labels and it scores 1.0 by definition.
    """
    gt, images = load_dataset(data)
    labelled = bool(gt.get("annotations"))
    if reference is None:
        if not labelled:
            raise ValueError("unlabelled data needs a reference detector for pseudo-labels")
        return GuardBaseline(gt, images, None, "labels", [])
    predictions = predict_coco(reference, gt, images)
    if labelled:
        return GuardBaseline(gt, images, coco_metrics(gt, predictions).map50_95, "labels", predictions)
    categories = gt["categories"] or [{"id": int(i), "name": n} for i, n in reference.names.items()]
    pseudo = detections_as_ground_truth(predictions, gt["images"], categories, conf)
    return GuardBaseline(pseudo, images, 1.0, "reference pseudo-labels", predictions)


def accuracy_guard(candidate, data: str | Path, reference=None, max_drop_points: float = 1.0, conf: float = 0.25,
                   baseline: GuardBaseline | None = None) -> GuardResult:
    """Does ``candidate`` keep accuracy within ``max_drop_points`` mAP50-95 points of ``reference``?

    With labels in ``data``, both are measured against them (the reference may be None: then the bar is the
    candidate's own labelled mAP and the guard passes). Without labels, the reference's detections are the
    pseudo-labels (see ``guard_baseline``). Pass ``baseline`` to score against one computed before; the reference
    itself (``candidate is reference``) then reuses its detections instead of running again.
    """
    base = baseline or guard_baseline(reference, data, conf)
    if candidate is reference and base.reference_predictions:
        predictions = base.reference_predictions
    else:
        predictions = predict_coco(candidate, base.ground_truth, base.images)
    cand = coco_metrics(base.ground_truth, predictions, conf=conf)
    ref_map = cand.map50_95 if base.map50_95 is None else base.map50_95
    drop = (ref_map - cand.map50_95) * 100
    return GuardResult(cand, ref_map, drop, drop <= max_drop_points, base.against)
