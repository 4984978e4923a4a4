"""Every awkward input comes back as detections or an error record; the rest of the batch is unaffected."""

import json
from pathlib import Path

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


def test_image_pixel_limit_is_an_option(tmp_path):
    """Pillow's decompression-bomb limit (89.5 megapixels) is the default; --max-image-pixels moves it, 0 lifts it."""
    from PIL import Image

    big = tmp_path / "big.png"
    Image.new("RGB", (9600, 9400), (90, 120, 150)).save(big)  # 90.2 megapixels, a few hundred KB as PNG
    small = tmp_path / "small.jpg"
    Image.new("RGB", (120, 100), (200, 10, 10)).save(small)
    runner = CliRunner()

    def run(*extra):
        res = runner.invoke(app, ["predict", "default", str(big), str(small), "--device", "cpu", "--json",
                                  "--out", str(tmp_path / "o"), *extra])
        return res.exit_code, {Path(e["path"]).name: e["error"] for e in json.loads(res.stdout)["errors"]}

    code, errors = run()
    assert code == 3 and list(errors) == ["big.png"] and "90,240,000 pixels" in errors["big.png"]
    assert "--max-image-pixels" in errors["big.png"]
    assert run("--max-image-pixels", "0") == (0, {})
    code, errors = run("--max-image-pixels", "10000")
    assert code == 3 and sorted(errors) == ["big.png", "small.jpg"] and "above the limit of 10,000" in errors["small.jpg"]
