"""Every awkward input comes back as detections or an error record; the rest of the batch is unaffected."""

import json

from typer.testing import CliRunner

from yolotune import Detector
from yolotune.cli import app


def test_each_input_yields_detections_or_error(bad_inputs):
    with Detector("yolov8n.yaml", device="cpu", batch=4, class_bias=-2.0) as det:
        results = list(det.predict([str(bad_inputs.root)]))
    bad_inputs.check(results)
    assert det.stats["errors"] == 5 and det.stats["ok"] == len(results) - 5
    good = next(r for r in results if r.source.path.endswith("good.jpg"))
    assert len(good) > 0  # the good image in a batch with bad ones still gets its boxes


def test_cli_exit_codes_and_records(bad_inputs, tmp_path):
    runner = CliRunner()
    missing = str(bad_inputs.root / "missing.jpg")
    res = runner.invoke(app, ["predict", "yolov8n.yaml", str(bad_inputs.root), missing, "--device", "cpu",
                              "--out", str(tmp_path), "--json", "--batch", "4"])
    assert res.exit_code == 3, res.output
    summary = json.loads(res.stdout)
    assert summary["failed"] == 6 and summary["inputs"] == 19
    assert any(e["path"] == missing and "no such file" in e["error"] for e in summary["errors"])
    assert summary["skipped_non_media"] == [str(bad_inputs.root / "labels.txt")]
    lines = (tmp_path / "detections.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 19
    assert any("名前 with space.jpg" in line for line in lines)  # non-ASCII names survive, unescaped


def test_cli_all_good_exits_zero(bad_inputs, tmp_path):
    res = CliRunner().invoke(app, ["predict", "yolov8n.yaml", str(bad_inputs.root / "good.jpg"), "--device", "cpu",
                                   "--out", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output


def test_cli_usage_and_model_errors(tmp_path):
    runner = CliRunner()
    assert runner.invoke(app, ["predict"]).exit_code == 2
    bad_model = tmp_path / "broken.pt"
    bad_model.write_bytes(b"definitely not a checkpoint")
    res = runner.invoke(app, ["predict", str(bad_model), str(tmp_path), "--device", "cpu"])
    assert res.exit_code == 2 and "broken.pt" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["predict", str(tmp_path / "nope.onnx"), str(tmp_path)])
    assert res.exit_code == 2 and "no such model file" in res.output
    res = runner.invoke(app, ["predict", "model.tflite", str(tmp_path)])
    assert res.exit_code == 2 and "unsupported model format" in res.output
    res = runner.invoke(app, ["predict", "yolov8n.yaml", str(tmp_path), "--format", "xml", "--device", "cpu"])
    assert res.exit_code == 2 and "unknown --format" in res.output
