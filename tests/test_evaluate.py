"""mAP from faster-coco-eval equals pycocotools' on the same predictions; precision/recall; pseudo-labels."""

import numpy as np
import pytest

from yolotune.data.evaluate import coco_metrics, detections_as_ground_truth


def make_case(seed: int, n_images: int = 20, n_classes: int = 4):
    rng = np.random.default_rng(seed)
    images = [{"id": i, "file_name": f"{i}.jpg", "height": 480, "width": 640} for i in range(n_images)]
    cats = [{"id": c, "name": f"c{c}"} for c in range(n_classes)]
    anns, results = [], []
    for img in images:
        for _ in range(rng.integers(0, 8)):
            x, y = rng.uniform(0, 500), rng.uniform(0, 350)
            w, h = rng.uniform(8, 140), rng.uniform(8, 130)
            c = int(rng.integers(0, n_classes))
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": c, "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            if rng.random() < 0.85:  # a detection near the truth, sometimes the wrong class
                jit = rng.normal(0, 0.08, 4) * [w, h, w, h]
                results.append({"image_id": img["id"], "category_id": c if rng.random() < 0.9 else (c + 1) % n_classes,
                                "bbox": list(np.array([x, y, w, h]) + jit), "score": float(rng.uniform(0.05, 1))})
        for _ in range(rng.integers(0, 3)):  # false positives
            results.append({"image_id": img["id"], "category_id": int(rng.integers(0, n_classes)),
                            "bbox": [float(rng.uniform(0, 500)), float(rng.uniform(0, 350)), 40.0, 40.0], "score": float(rng.uniform(0, 0.6))})
    return {"images": images, "categories": cats, "annotations": anns}, results


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_faster_coco_eval_equals_pycocotools(seed):
    gt, res = make_case(seed)
    a = coco_metrics(gt, res, backend="faster")
    b = coco_metrics(gt, res, backend="pycocotools")
    assert a.backend == "faster-coco-eval" and b.backend == "pycocotools"
    assert 0.1 < a.map50_95 < 0.95
    assert abs(a.map50_95 - b.map50_95) <= 1e-4 and abs(a.map50 - b.map50) <= 1e-4
    for name in a.per_class_ap:
        assert abs(a.per_class_ap[name] - b.per_class_ap[name]) <= 1e-4


def test_perfect_predictions_and_precision_recall():
    gt, _ = make_case(3)
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9} for a in gt["annotations"]]
    m = coco_metrics(gt, perfect)
    assert m.map50_95 > 0.99 and m.precision == 1.0 and m.recall == 1.0
    half = perfect[::2] + [dict(p, category_id=(p["category_id"] + 1) % 4) for p in perfect[1::2]]
    m = coco_metrics(gt, half)
    assert abs(m.precision - 0.5) < 0.02 and abs(m.recall - 0.5) < 0.02
    assert coco_metrics(gt, []).map50_95 == 0.0


def test_pseudo_labels_from_a_reference_model():
    gt, res = make_case(4)
    pseudo = detections_as_ground_truth(res, gt["images"], gt["categories"], conf=0.3)
    same = [r for r in res if r["score"] >= 0.3]
    assert coco_metrics(pseudo, same).map50_95 > 0.99  # the reference agrees with itself
    shifted = [dict(r, bbox=[r["bbox"][0] + 0.3 * r["bbox"][2], *r["bbox"][1:]]) for r in same]
    assert coco_metrics(pseudo, shifted).map50_95 < 0.6  # a degraded candidate is caught without any labels
