"""`yolotune demo` (what `make demo` runs) writes its outputs offline on the CPU and says where they are."""

import json

from typer.testing import CliRunner

from yolotune.cli import app


def test_demo_writes_annotated_outputs_and_report(tmp_path):
    out = tmp_path / "demo"
    res = CliRunner().invoke(app, ["demo", "--out", str(out), "--images", "2", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert str(out.resolve()) in res.output.replace("\n", "")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["inputs"] == 2 + 24 and summary["failed"] == 0  # 2 images + a 24-frame clip
    assert len(list((out / "images").iterdir())) == 26
    assert len((out / "detections.jsonl").read_text().splitlines()) == 26
    assert "random weights" in (out / "report.md").read_text()
