"""predict --ray on a real local Ray cluster (2 CPUs): the same records as plain predict, every input exactly once
when an actor dies, resume after a stop, and what --ray refuses."""

import json
import os
import signal
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from yolotune import Detector
from yolotune.cli import app
from yolotune.data.samples import write_sample_images
from yolotune.pipeline.run import predict_to_sinks

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

OPTS = {"device": "cpu", "batch": 8, "imgsz": 64, "conf": 0.05}



@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    folder = root / "in"
    write_sample_images(folder, 300, size=(48, 64), seed=5)
    (folder / "broken.jpg").write_bytes(b"not a picture")
    return folder


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_actors_give_the_records_plain_predict_gives(ray_cluster, images, tmp_path):
    from yolotune.scale.predict import predict_on_ray

    with Detector("default", **OPTS) as det:
        plain = predict_to_sinks(det, [images], tmp_path / "plain", ["jsonl", "coco"])
    summary = predict_on_ray("default", [images], tmp_path / "ray", ["jsonl", "coco"], OPTS, actors=2)
    assert records(tmp_path / "ray" / "detections.jsonl") == records(tmp_path / "plain" / "detections.jsonl")
    assert json.loads((tmp_path / "ray" / "coco_results.json").read_text()) == \
        json.loads((tmp_path / "plain" / "coco_results.json").read_text())
    assert (summary.inputs, summary.ok, summary.failed) == (plain.inputs, plain.ok, plain.failed) == (301, 300, 1)
    assert summary.config["actors"] == 2 and sum(a["inputs"] for a in summary.actors) == 301
    assert 1 <= len(summary.actors) <= 2  # Ray hands the calls out: one actor may start late and get none
    assert all(a["device"] == "cpu" and a["images_per_s"] > 0 for a in summary.actors)


def test_an_actor_killed_mid_run_loses_and_repeats_nothing(ray_cluster, images, tmp_path):
    from yolotune.scale.predict import predict_on_ray

    killed = []

    def kill_one(row):  # the process of the actor that sent the 100th row dies as an actor or node would
        if len(killed) == 0 and row["index"] >= 100:
            killed.append(row["actor"])
            os.kill(int(row["actor"].rsplit(":", 1)[1]), signal.SIGKILL)

    summary = predict_on_ray("default", [images], tmp_path / "k", ["jsonl"], OPTS, actors=2, on_row=kill_one)
    paths = [r["path"] for r in records(tmp_path / "k" / "detections.jsonl")]
    assert killed and len(paths) == len(set(paths)) == 301  # each input exactly once
    assert summary.ok == 300 and summary.failed == 1


def test_a_stopped_run_resumes_without_writing_anything_twice(ray_cluster, images, tmp_path):
    from yolotune.scale.predict import predict_on_ray

    stop = threading.Event()
    stop.reason = "SIGINT"
    first = predict_on_ray("default", [images], tmp_path / "r", ["jsonl", "coco"], OPTS, actors=2, stop=stop,
                           progress=lambda done, total, s: stop.set() if done >= 120 else None)
    assert first.interrupted == "SIGINT" and 100 <= first.inputs < 301
    again = predict_on_ray("default", [images], tmp_path / "r", ["jsonl", "coco"], OPTS, actors=2, resume=True)
    rows = records(tmp_path / "r" / "detections.jsonl")
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)) == 301 and again.interrupted is None
    assert again.resumed >= first.inputs - 2 and sum(a["inputs"] for a in again.actors) <= 301 - again.resumed + 1
    coco = json.loads((tmp_path / "r" / "coco_images.json").read_text())
    assert len(coco) == 300  # the merged COCO file holds every image once


def test_the_cli_runs_on_ray_and_refuses_what_it_cannot_write(ray_cluster, images, tmp_path):
    res = CliRunner().invoke(app, ["predict", "default", str(images), "--device", "cpu", "--imgsz", "64", "--ray",
                                   "local", "--actors", "1", "--out", str(tmp_path / "c"), "--json"])
    assert res.exit_code == 3, res.output  # the broken file is a failed input (exit 3, as plain predict)
    summary = json.loads(res.stdout[res.stdout.index("{"):])
    assert summary["inputs"] == 301 and summary["failed"] == 1 and len(summary["actors"]) == 1
    res = CliRunner().invoke(app, ["predict", "default", str(images), "--device", "cpu", "--ray", "local", "-f",
                                   "images", "--out", str(tmp_path / "d")])
    assert res.exit_code == 2 and "--ray writes jsonl, coco" in res.output
