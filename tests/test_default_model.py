"""The embedded default model: resolves by name, detects the generated classes, agrees with Ultralytics predict."""

import numpy as np
import pytest
from typer.testing import CliRunner

from yolotune import Detector
from yolotune.assets import default_model_record, resolve
from yolotune.cli import app
from yolotune.data.synth import write_dataset
from yolotune.data.validate import validate

from matching import matched_fraction


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("scenes"), 24, seed=4242, workers=2)


def test_default_is_embedded_small_and_documented():
    path = resolve("default")
    assert path.is_file() and path.stat().st_size <= 8 * 1024 * 1024
    record = default_model_record()
    assert record["args"]["seed"] != record["args"]["val_seed"] and record["versions"]["ultralytics"]
    # the shipped weights' held-out accuracy, as recorded by the training run (at least 0.75)
    assert record["yolotune_val"]["map50_95"] >= 0.75 and record["weights_bytes"] == path.stat().st_size
    assert resolve("yolov8n.pt") is None


def test_default_model_detects_generated_objects(scenes):
    with Detector("default", device="cpu", batch=8, conf=0.001) as det:
        assert len(det.names) == 10
        m = validate(det, scenes)
    assert m.map50 > 0.6 and m.map50_95 > 0.45 and m.recall > 0.6, m.to_dict()


def test_cli_predict_default(scenes, tmp_path):
    res = CliRunner().invoke(app, ["predict", "default", str(scenes / "images"), "--device", "cpu", "--out", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    assert '"classes": 10' in res.stdout


def test_trained_model_matches_ultralytics_predict(scenes):
    ultralytics = pytest.importorskip("ultralytics")
    images = sorted(str(p) for p in (scenes / "images").iterdir())
    model = ultralytics.YOLO(str(resolve("default")))
    ref = []
    for k in range(0, len(images), 4):  # the same batches as ours (see test_e2e_ultralytics)
        for r in model.predict(images[k : k + 4], device="cpu", verbose=False):
            ref.append((r.boxes.xyxy.numpy(), r.boxes.conf.numpy(), r.boxes.cls.numpy().astype(np.int64)))
    with Detector("default", device="cpu", batch=4) as det:
        got = [(r.boxes, r.scores, r.class_ids) for r in det.predict(images)]
    frac, total = matched_fraction(ref, got)
    back, _ = matched_fraction(got, ref)
    assert total > 50 and frac >= 0.99 and back >= 0.99, (frac, back, total)


@pytest.mark.parametrize("layout", ["raw", "end2end"])
def test_default_exported_to_onnx_gives_the_same_boxes(scenes, tmp_path, layout):
    # end2end: decoding and NMS run inside the ONNX graph; batch 5 of 12 images also checks a dynamic last batch
    res = CliRunner().invoke(app, ["export", "default", "--out", str(tmp_path / "default.onnx"), f"--{layout}"])
    assert res.exit_code == 0, res.output
    assert f"layout {'end2end' if layout == 'end2end' else 'v8'}" in res.output
    images = sorted(str(p) for p in (scenes / "images").iterdir())[:12]
    with Detector(str(tmp_path / "default.onnx"), device="cpu", batch=5) as det:
        assert det.engine.name == "onnxruntime" and det.names[0] == "circle"
        assert det.model.spec.layout == ("end2end" if layout == "end2end" else "v8")
        got = [(r.boxes, r.scores, r.class_ids) for r in det.predict(images)]
    with Detector("default", device="cpu", batch=4, rect=False) as det:  # the export takes a square 640 input
        ref = [(r.boxes, r.scores, r.class_ids) for r in det.predict(images)]
    frac, total = matched_fraction(ref, got)
    back, _ = matched_fraction(got, ref)
    assert total > 20 and frac >= 0.99 and back >= 0.99


@pytest.mark.slow
def test_accuracy_guard_with_labels_and_with_pseudo_labels(scenes, tmp_path):
    import json

    from yolotune.data.validate import accuracy_guard

    with Detector("default", device="cpu", batch=8, conf=0.001) as ref, \
            Detector("default", device="cpu", batch=8, conf=0.001, imgsz=320) as small, \
            Detector("yolov8n.yaml", device="cpu", batch=8, conf=0.001) as random_model:
        same = accuracy_guard(ref, scenes, reference=ref)
        assert same.passed and same.against == "labels" and abs(same.drop_points) < 1e-6
        worse = accuracy_guard(small, scenes, reference=ref)  # half the input size loses small objects
        assert worse.drop_points > 1.0 and not worse.passed
        # no labels: the reference's detections become the ground truth
        unlabelled = tmp_path / "unlabelled"
        unlabelled.mkdir()
        gt = json.loads((scenes / "annotations.json").read_text())
        (unlabelled / "annotations.json").write_text(json.dumps(dict(gt, annotations=[])))
        (unlabelled / "images").symlink_to(scenes / "images")
        pseudo = accuracy_guard(ref, unlabelled, reference=ref)
        assert pseudo.against == "reference pseudo-labels" and pseudo.passed
        assert not accuracy_guard(random_model, unlabelled, reference=ref).passed
