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
