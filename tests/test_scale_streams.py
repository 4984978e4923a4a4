"""run --ray on a real local Ray cluster (2 CPUs): streams over two actors, one actor killed mid-run (its streams
go on on the other, no frame of a file lost or written twice, the move counted), and the command with its sources
file watched, its control endpoint and one /metrics for the cluster."""

import json
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from yolotune.cli import app
from yolotune.data.synth import write_video
from yolotune.io.stream_specs import SourceSpec

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

OVERRIDES = {"device": "cpu", "batch": 4, "imgsz": 64, "conf": 0.05}



@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("ray-streams") / "c.mp4", frames=90, size=(48, 64), seed=1)


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_actor_killed_mid_run_its_file_streams_go_on_elsewhere_losing_no_frame(ray_cluster, clip, tmp_path):
    from yolotune.scale.run import ClusterOptions, run_on_ray
    from yolotune.serve.runtime import RunOptions

    specs = [SourceSpec(str(clip), "file", f"s{i}", realtime=True, lossless=True) for i in range(4)]
    killed, seen = [], [0]

    def kill_one(update):  # once 40 frames are written, an actor with streams dies as a crashed process would
        seen[0] += sum(1 for _, r in update["records"] if "frame" in r)
        if not killed and seen[0] >= 40:
            victim = next(a for a in update["actors"] if a["streams"])
            killed.append(victim)
            ray.kill(ray.get_actor(victim["ray_name"]), no_restart=False)

    summary = run_on_ray("default", specs, RunOptions(out=tmp_path, max_batch=4), OVERRIDES,
                         ClusterOptions(actors=2, capacity={"frames_per_s": 200}), on_poll=kill_one)
    assert killed and summary.moves >= 1
    by = {s.name: s for s in summary.streams}
    for i in range(4):
        rows = rows_of(tmp_path / f"s{i}" / "detections.jsonl")
        assert [r["frame"] for r in rows if "frame" in r] == list(range(90))  # every frame once, in order
        assert by[f"s{i}"].state == "finished" and by[f"s{i}"].processed == 90
    for name in killed[0]["streams"]:  # the killed actor's streams moved, and say so
        moved = [r for r in rows_of(tmp_path / name / "detections.jsonl") if r.get("event") == "moved"]
        assert moved and "continues on actor" in moved[0]["message"] and killed[0]["actor"] in moved[0]["message"]
        assert by[name].moves >= 1 and by[name].reconnects >= 1 and by[name].outages >= 1
    assert summary.failed == [] and summary.frames == 360 and len(summary.actors) == 2


def test_the_run_command_on_ray_with_its_sources_file_watched_its_endpoint_and_one_metrics(ray_cluster, clip, tmp_path):
    listing = tmp_path / "cams.txt"
    listing.write_text(f"door={clip}\nyard={clip}\n")
    control, metrics = free_port(), free_port()
    seen: dict = {}

    def meanwhile():
        base = f"http://127.0.0.1:{control}/streams"
        deadline = time.time() + 60
        while time.time() < deadline:  # until the actors are up and the endpoint answers
            try:
                with urllib.request.urlopen(base, timeout=2) as r:
                    if len(json.loads(r.read())) == 2:
                        break
            except OSError:
                pass
            time.sleep(0.3)
        listing.write_text(f"door={clip}\ngate={clip}\n")  # yard taken out, gate put in
        req = urllib.request.Request(base, data=json.dumps({"source": str(clip), "name": "lane"}).encode(),
                                     method="POST")
        seen["post"] = urllib.request.urlopen(req, timeout=10).status
        time.sleep(3)
        with urllib.request.urlopen(base, timeout=10) as r:
            seen["list"] = json.loads(r.read())
        deadline = time.time() + 15
        while time.time() < deadline:  # the actors' metrics come with their drains, every two seconds
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10) as r:
                seen["metrics"] = r.read().decode()
            if 'yolotune_frames_total{actor="' in seen["metrics"]:
                break
            time.sleep(0.5)

    helper = threading.Thread(target=meanwhile)
    helper.start()
    res = CliRunner().invoke(app, [
        "run", "default", "--sources-file", str(listing), "--watch", "--loop", "--realtime", "--device", "cpu",
        "--batch", "4", "--ray", "local", "--actors", "2", "--capacity-fps", "100", "--control-port", str(control),
        "--metrics-port", str(metrics), "--duration", "25", "--out", str(tmp_path / "out"), "--json"])
    helper.join()
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout[res.stdout.index("{"):])
    by = {s["name"]: s for s in summary["streams"]}
    assert set(by) == {"door", "yard", "gate", "lane"} and by["yard"]["state"] == "removed"
    assert all(by[n]["processed"] > 0 and by[n]["actor"] for n in ("door", "gate", "lane"))
    assert seen["post"] == 201 and {s["name"] for s in seen["list"]} >= {"door", "gate", "lane"}
    assert {a["state"] for a in summary["actors"]} == {"up"} and summary["stopped_by"] == "duration"
    # one /metrics for the cluster: the streams labelled with the actor they run on, and the actors' own figures
    assert 'yolotune_frames_total{actor="' in seen["metrics"] and 'stream="door"' in seen["metrics"]
    assert "yolotune_actor_up{" in seen["metrics"] and "yolotune_actor_capacity_fps{" in seen["metrics"]
    frames = [r["frame"] for r in rows_of(tmp_path / "out" / "door" / "detections.jsonl") if "frame" in r]
    assert frames == sorted(set(frames))  # in order, none twice
