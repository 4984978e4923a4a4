"""What a newcomer meets at the command line: help that reads right, one-line usage errors, warnings instead of
silence, outputs that are not cut, and an interrupted predict that keeps what it did."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from yolotune.cli import app

COMMANDS = ["predict", "run", "plan", "val", "export", "profile", "diagram", "compare", "optimize", "demo"]


@pytest.mark.parametrize("group", [[], ["data"]])
def test_group_help_shows_no_value_for_help(group):
    text = invoke(*group, "--help").output
    assert "--help" in text and "<bool>" not in text


def invoke(*args, **env):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200", **env})


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_no_value_for_flags_and_keeps_its_brackets(command):
    text = invoke(command, "--help").output
    own = [ln for ln in text.splitlines() if ln.strip(" │*").startswith("--")]
    assert own and not [ln for ln in own if "<bool>" in ln]
    if command == "predict":
        assert "yolotune[ultralytics]" in text  # rich markup ate "[ultralytics]": "(needs yolotune)"
        assert "video" in text and "MODEL" in text


def write_images(folder, n=3, size=(48, 64)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / f"{i:04d}.jpg")
    return folder


@pytest.mark.parametrize("command", ["predict", "run", "profile", "optimize", "export"])
def test_an_out_that_is_a_file_is_a_one_line_usage_error(tmp_path, command):
    photos = write_images(tmp_path / "in")
    taken = tmp_path / "taken"
    taken.write_text("a file")
    args = {"predict": ["predict", "default", str(photos), "--out", str(taken), "--device", "cpu", "-f", "images"],
            "run": ["run", "default", "-s", str(photos), "--out", str(taken), "--device", "cpu"],
            "profile": ["profile", "default", str(photos), "--out", str(taken), "--device", "cpu"],
            "optimize": ["optimize", "default", "--out", str(taken), "--device", "cpu"],
            "export": ["export", "default", "--out", str(taken / "x.onnx")]}[command]
    res = invoke(*args)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and "--out" in res.output and str(taken) in " ".join(res.output.split())


def test_video_alone_writes_the_annotated_video(tmp_path):
    from yolotune.data.synth import write_video

    clip = write_video(tmp_path / "clip.mp4", frames=4, size=(96, 128))
    res = invoke("predict", "default", str(clip), "--device", "cpu", "--out", str(tmp_path / "o"), "-f", "video")
    assert res.exit_code == 0 and (tmp_path / "o" / "videos" / "clip.mp4").stat().st_size > 1000


def test_nothing_to_do_is_said_and_recursive_is_offered(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    res = invoke("predict", "default", str(empty), "--device", "cpu", "--out", str(tmp_path / "o"))
    assert res.exit_code == 0 and "no images or videos" in res.output and "throughput" not in res.output
    write_images(tmp_path / "nested" / "a" / "b")
    res = invoke("predict", "default", str(tmp_path / "nested"), "--device", "cpu", "--out", str(tmp_path / "o"))
    assert "--recursive" in res.output
    res = invoke("predict", "default", str(tmp_path / "nested"), "--recursive", "--device", "cpu", "--json",
                 "--out", str(tmp_path / "o"))
    assert res.exit_code == 0 and json.loads(res.stdout)["inputs"] == 3
    res = invoke("predict", "default", str(tmp_path / "nope"), "--device", "cpu", "--out", str(tmp_path / "o"))
    assert res.exit_code == 3 and "throughput" not in res.output


def test_val_without_labels_says_so(tmp_path):
    photos = write_images(tmp_path / "in")
    res = invoke("val", "default", str(photos), "--device", "cpu")
    assert res.exit_code == 2 and "no labels" in res.output and "annotations.json" in res.output


def test_a_random_bytes_pt_is_called_corrupt_without_other_tools_advice(tmp_path):
    bad = tmp_path / "random.pt"
    bad.write_bytes(os.urandom(4096))
    res = invoke("predict", str(bad), str(tmp_path), "--device", "cpu")
    assert res.exit_code == 2 and "not a PyTorch checkpoint" in res.output
    assert "yolo predict" not in res.output and "--trust-model" not in res.output


def test_output_that_is_not_a_terminal_is_not_cut_at_80_columns(tmp_path):
    photos = write_images(tmp_path / "in", n=2)
    out = subprocess.run([sys.executable, "-m", "yolotune.cli", "predict", "default", str(photos), str(tmp_path / "gone.jpg"),
                          "--device", "cpu", "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "COLUMNS": ""})
    assert out.returncode == 3
    assert "no such file or directory" in out.stdout  # the error on one line, not a word per line
    assert "…" not in out.stdout


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_predict_writes_every_output_for_what_it_did(tmp_path, sig, code):
    photos = write_images(tmp_path / "in", n=600, size=(96, 128))
    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-m", "yolotune.cli", "predict", "default", str(photos), "--device", "cpu",
                             "--batch", "2", "--out", str(out), "-f", "jsonl", "-f", "coco", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    jsonl = out / "detections.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (jsonl.exists() and jsonl.stat().st_size > 0):
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr[-2000:]
    summary = json.loads(stdout)
    assert summary["interrupted"] == signal.Signals(sig).name and 0 < summary["inputs"] < 600
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]  # every line whole
    assert len(rows) == summary["inputs"]
    images = json.loads((out / "coco_images.json").read_text())
    assert len(images) == summary["ok"] and isinstance(json.loads((out / "coco_results.json").read_text()), list)


def test_staged_work_prints_a_line_per_stage_and_while_one_lasts(monkeypatch):
    import io

    from rich.console import Console

    from yolotune import cli_shared

    buffer = io.StringIO()
    monkeypatch.setattr(cli_shared, "err", Console(file=buffer, width=200))
    with cli_shared.stage_progress("optimizing", every_s=0.05) as say:
        say("candidate 1 of 3: torch fp32")
        time.sleep(0.3)
    lines = buffer.getvalue().splitlines()
    assert lines[0].startswith("optimizing: candidate 1 of 3: torch fp32 (")
    assert len([ln for ln in lines if "candidate 1 of 3" in ln]) >= 3  # repeated while the stage lasts


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_optimize_says_one_thing_and_exits_with_the_signal(tmp_path, sig, code):
    proc = subprocess.Popen([sys.executable, "-m", "yolotune.cli", "optimize", "default", "--device", "cpu",
                             "--val-images", "8", "--out", str(tmp_path / "a")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:  # progress lines, as there is no terminal
        seen.append(line)
        if "candidate 1 of " in line:
            break
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, "".join(seen) + stderr[-2000:]
    assert "Traceback" not in stderr
    assert "nothing saved" in stdout and "was saved" not in stdout
    assert not (tmp_path / "a" / "yolotune.json").exists()


def test_a_video_shows_its_frames_as_progress_where_there_is_no_terminal(tmp_path):
    from yolotune.data.synth import write_video

    clip = write_video(tmp_path / "clip.mp4", frames=20, size=(96, 128))
    res = subprocess.run([sys.executable, "-m", "yolotune.cli", "predict", "default", str(clip), "--device", "cpu",
                          "--out", str(tmp_path / "o"), "-f", "jsonl"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "detecting: 20 of 20 " in res.stderr  # frames, not files: one video is many steps


def test_progress_ends_with_a_last_line_when_the_total_is_unknown(tmp_path, monkeypatch):
    from yolotune import Detector, predict_to_sinks  # the library's own predict job, as the README shows it

    photos = write_images(tmp_path / "in", n=3, size=(64, 64))
    calls = []
    with Detector("default", device="cpu", batch=2) as det:
        monkeypatch.setattr(det, "count_inputs", lambda _s: None)  # a video that does not declare its frames
        summary = predict_to_sinks(det, [photos], tmp_path / "o", ["jsonl", "coco"], progress=lambda *a: calls.append(a))
    assert calls and calls[-1][0] == 3
    assert summary.ok == 3 and summary.failed == 0 and (tmp_path / "o" / "detections.jsonl").is_file()
    assert (tmp_path / "o" / "coco_results.json").is_file() and str(tmp_path / "o" / "detections.jsonl") in summary.outputs
    assert summary.to_dict()["ok"] == 3  # the JSON of `predict --json`


def test_a_missing_weights_file_says_where_weights_come_from(tmp_path):
    res = invoke("predict", "yolov8n.pt", str(tmp_path), "--device", "cpu")
    assert res.exit_code == 2 and "no such model file" in res.output
    assert "downloads nothing" in res.output and "default" in res.output


def test_a_config_model_warns_that_its_weights_are_random(tmp_path):
    photos = write_images(tmp_path / "in", n=1)
    res = invoke("predict", "yolov8n.yaml", str(photos), "--device", "cpu", "--out", str(tmp_path / "o"))
    assert res.exit_code == 0, res.output
    assert "random weights" in res.output and "speed" in res.output
