"""End to end on CPU: our detections match Ultralytics predict's on the same model, images and thresholds."""

import numpy as np
import pytest

from yolotune import Detector
from yolotune.data.samples import write_sample_images

from matching import matched_fraction
from models import save_biased_checkpoint

ultralytics = pytest.importorskip("ultralytics")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_biased_checkpoint(tmp_path_factory.mktemp("model") / "yolov8n_biased.pt")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    paths = write_sample_images(d, 4, size=(720, 1280), seed=3)
    paths += write_sample_images(d / "other", 2, size=(480, 640), seed=4)
    return [str(p) for p in paths]


def ultralytics_predict(checkpoint, images, batch, **kw):
    """Ultralytics on the same batches as ours: a list source is one batch to Ultralytics, and a batch of mixed
    sizes gets the square canvas in both pipelines, so the partition must be the same."""
    model = ultralytics.YOLO(str(checkpoint))
    out = []
    for k in range(0, len(images), batch):
        for r in model.predict(images[k : k + batch], device="cpu", verbose=False, **kw):
            b = r.boxes
            out.append((b.xyxy.numpy(), b.conf.numpy(), b.cls.numpy().astype(np.int64)))
    return out


@pytest.mark.parametrize("conf,iou", [(0.25, 0.7), (0.3, 0.45)])
def test_matches_ultralytics_predict(checkpoint, images, conf, iou):
    ref = ultralytics_predict(checkpoint, images, 4, conf=conf, iou=iou)
    with Detector(str(checkpoint), device="cpu", batch=4, conf=conf, iou=iou) as det:
        got = [(r.boxes, r.scores, r.class_ids) for r in det.predict(images)]
    assert sum(len(r[1]) for r in ref) > 100, "the biased model should give many boxes"
    frac, total = matched_fraction(ref, got)
    assert frac >= 0.99, f"only {frac:.2%} of {total} Ultralytics boxes matched"
    frac_back, _ = matched_fraction(got, ref)
    assert frac_back >= 0.99, f"only {frac_back:.2%} of our boxes matched Ultralytics'"
