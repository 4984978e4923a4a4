"""`yolotune demo` (what `make demo` runs) writes its outputs offline on the CPU and says where they are."""

import json

import pytest
from typer.testing import CliRunner

from yolotune.cli import app


@pytest.mark.slow
def test_demo_writes_annotated_outputs_and_report(tmp_path):
    out = tmp_path / "demo"
    res = CliRunner().invoke(app, ["demo", "--out", str(out), "--images", "3", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert str(out.resolve()) in res.output.replace("\n", "")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["inputs"] == 3 + 48 and summary["failed"] == 0  # 3 scenes + a 48-frame clip
    assert len(list((out / "images").rglob("*.jpg"))) == 51  # images/<place among the inputs>
    assert len((out / "detections.jsonl").read_text().splitlines()) == 51
    assert (out / "videos" / "clip.mp4").stat().st_size > 10_000
    assert sum(summary["per_class"].values()) == summary["detections"] > 0
    assert summary["sample_accuracy"]["map50"] > 0.3  # the trained default model finds the objects
    assert "mAP50-95" in (out / "report.md").read_text()
