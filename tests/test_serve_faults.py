"""yolotune run under faults, against real servers on 127.0.0.1 (tests/live_server.py: PyAV remuxing a clip as a
live MPEG-TS stream over HTTP): overload, sources that die and come back or never answer, real-time files, and
what the dashboard, /metrics and the JSONL say meanwhile. Every wait is bounded."""

import json
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest

import live_server
from stand_ins import SlowDetector as SlowEngine
from yolotune.data.synth import write_video
from yolotune.serve.runtime import RunOptions, StreamRuntime
from yolotune.io.stream_specs import SourceSpec, parse_source


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("live")
    return {"small": write_video(d / "small.mp4", frames=60, size=(96, 160), seed=1),
            "large": write_video(d / "large.mp4", frames=60, size=(192, 320), seed=2)}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def url_of(port: int) -> str:
    return f"http://127.0.0.1:{port}/cam"


def serving(clip, ports):
    """A live server for ``ports``, up once it answers."""
    proc = live_server.start(clip, ports)

    def up():
        try:
            with socket.create_connection(("127.0.0.1", ports[-1]), timeout=0.2):
                return True
        except OSError:
            return False

    assert wait_for(up, 20), "the live server did not start"
    return proc


def in_background(rt: StreamRuntime) -> tuple[threading.Thread, dict]:
    """Run ``rt`` on a thread; the dict gets its summary when it ends."""
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(rt.run().to_dict()), daemon=True)
    runner.start()
    return runner, result


def reconnecting_camera(tmp_path, port, **options) -> StreamRuntime:
    """A runtime for one live camera on ``port`` that reconnects fast."""
    opts = dict(out=tmp_path, open_timeout_s=1, read_timeout_s=1, backoff_base_s=0.05, backoff_cap_s=0.2)
    return StreamRuntime(SlowEngine(0.0), [parse_source(f"cam={url_of(port)}")], RunOptions(**{**opts, **options}))


@pytest.mark.parametrize("decoders", ["threads", "processes"])
def test_live_overload_drops_frames_before_decoding_them(clips, tmp_path, decoders):
    ports = live_server.free_ports(4)
    server = serving(clips["small"], ports)
    try:
        specs = [parse_source(f"cam{i}={url_of(p)}") for i, p in enumerate(ports)]
        summary = StreamRuntime(SlowEngine(0.1), specs, RunOptions(out=tmp_path, max_batch=2, duration_s=4,
                                                                  queue_size=4, decoders=decoders)).run().to_dict()
    finally:
        server.terminate()
    for s in summary["streams"]:
        queue_drops = s["dropped"] - s["dropped_before_decode"]
        assert s["processed"] > 0 and s["dropped"] > s["processed"]  # 30 FPS offered, about 5 taken
        # past capacity the frames are held back undecoded: only a few are decoded to be dropped from the queue
        assert s["dropped_before_decode"] > 5 * queue_drops
        assert s["decoded"] == s["processed"] + queue_drops + s["unprocessed_at_stop"]
        rows = [r for r in read_jsonl(tmp_path / s["name"] / "detections.jsonl") if "frame" in r]
        frames = [r["frame"] for r in rows]
        assert frames == sorted(set(frames)) and all(r["time"] for r in rows)  # in order, with gaps, stamped
    assert summary["failed"] == [] and summary["damaged"] == []


def test_realtime_files_drop_like_cameras_unless_lossless(clips, tmp_path):
    from rich.console import Console

    from yolotune.serve.dashboard import stream_table

    def run(lossless):
        specs = [parse_source(f"f{i}={clips['small']}", loop=True, realtime=True, lossless=lossless) for i in range(3)]
        rt = StreamRuntime(SlowEngine(0.1), specs, RunOptions(out=None, max_batch=1, duration_s=3, queue_size=4))
        return rt, rt.run().to_dict()

    rt, dropping = run(False)
    assert all(s["dropped"] > 0 and s["max_lag_s"] < 1.0 for s in dropping["streams"])  # old frames go, counted
    console = Console(record=True, width=200)
    console.print(stream_table(rt))
    assert "lag s" in console.export_text()
    metrics = rt.metrics.text()
    assert 'yolotune_stream_lag_seconds{stream="f0"}' in metrics and 'le="60.0"' in metrics
    _, lossless = run(True)
    assert all(s["dropped"] == 0 for s in lossless["streams"])
    assert max(s["max_lag_s"] for s in lossless["streams"]) > 1.0  # every frame, late: the lag shows


def test_the_fps_column_shows_a_rate_while_batches_are_slower_than_the_refresh(clips):
    spec = parse_source(str(clips["small"]), loop=True)
    seen = []
    rt = StreamRuntime(SlowEngine(0.8), [spec], RunOptions(out=None, max_batch=4, duration_s=4.5))
    rt.run(on_tick=lambda r: seen.append((r.stats[0].frames, r.stats[0].fps)))
    after_first = [fps for frames, fps in seen if frames]
    assert len(after_first) >= 4 and min(after_first) > 0  # a 0.5 s window read 0.0 between batches
    assert all(2.0 < fps < 8.0 for fps in after_first[2:])  # about 4 frames per 0.8 s batch


def test_events_are_stamped_and_written_when_they_happen_and_a_never_connected_source_fails(tmp_path):
    from typer.testing import CliRunner

    from yolotune.cli import app

    (port,) = live_server.free_ports(1)  # nothing listens there
    out = tmp_path / "out"
    jsonl = out / "dead" / "detections.jsonl"
    seen_during = []
    started = time.time()
    watcher = threading.Thread(target=lambda: seen_during.append(wait_for(
        lambda: jsonl.exists() and "reconnecting" in jsonl.read_text(), 3.0)), daemon=True)
    watcher.start()
    res = CliRunner().invoke(app, ["run", "default", "--device", "cpu", "-s", f"dead={url_of(port)}", "--out", str(out),
                                   "--duration", "5", "--timeout", "1", "--no-dashboard", "--json"])
    watcher.join(5)
    assert seen_during == [True]  # written while the run went on, with no batch to carry it
    summary = json.loads(res.stdout)
    dead = summary["streams"][0]
    assert res.exit_code == 3 and summary["failed"] == ["dead"] and summary["never_connected"] == ["dead"]
    assert dead["state"] == "never-connected" and dead["reconnect_attempts"] >= 1 and dead["outages"] == 0
    events = [r for r in read_jsonl(jsonl) if "event" in r]
    from datetime import datetime

    first = datetime.fromisoformat(events[0]["time"]).timestamp()
    assert started <= first < started + 3  # stamped when it happened, not at exit


def test_an_outage_is_one_outage_and_the_error_clears_when_the_stream_is_back(clips, tmp_path):
    (port,) = live_server.free_ports(1)
    server = serving(clips["small"], [port])
    rt = reconnecting_camera(tmp_path, port, duration_s=8)
    runner, result = in_background(rt)
    try:
        assert wait_for(lambda: rt.stats[0].frames > 20, 10)
        server.terminate()
        server.wait(5)
        killed = time.time()
        assert wait_for(lambda: rt.workers[0].status.attempts >= 3, 10)  # several attempts in one outage
        assert rt.workers[0].status.error  # down: the error shows now
        server = serving(clips["small"], [port])
        assert wait_for(lambda: rt.workers[0].status.state == "running" and rt.workers[0].status.error is None, 10)
        runner.join(15)
    finally:
        server.terminate()
    s = result["streams"][0]
    assert s["outages"] == 1 and s["reconnects"] == 1 and s["reconnect_attempts"] >= 3
    assert s["error"] is None and s["last_error"]
    events = [r for r in read_jsonl(tmp_path / "cam" / "detections.jsonl") if "event" in r]
    from datetime import datetime

    down = next(r for r in events if r["event"] == "reconnecting")
    assert abs(datetime.fromisoformat(down["time"]).timestamp() - killed) < 3
    assert [r["event"] for r in events].count("running") == 2


def test_the_annotated_video_follows_a_stream_whose_size_changes_after_a_reconnect(clips, tmp_path):
    import av

    (port,) = live_server.free_ports(1)
    server = serving(clips["small"], [port])
    rt = reconnecting_camera(tmp_path, port, formats=("jsonl", "video"), duration_s=10, pixel_format="rgb24")
    runner, _ = in_background(rt)
    try:
        assert wait_for(lambda: rt.stats[0].frames > 15, 10)
        server.terminate()
        server.wait(5)
        server = serving(clips["large"], [port])  # the camera comes back at another resolution
        assert wait_for(lambda: rt.workers[0].status.reconnects == 1, 10)
        back = rt.stats[0].frames
        assert wait_for(lambda: rt.stats[0].frames > back + 15, 10)  # frames of the new size processed
        rt._request_stop("test")
        runner.join(15)
    finally:
        server.terminate()
    videos = sorted((tmp_path / "cam" / "videos").glob("*.mp4"))
    assert [v.name for v in videos] == ["cam.mp4", "cam_part2.mp4"]
    sizes = []
    for v in videos:
        with av.open(str(v)) as c:
            frames = list(c.decode(video=0))
        sizes.append((frames[0].height, frames[0].width))
    assert sizes == [(96, 160), (192, 320)]
    assert any(r.get("event") == "video-part" for r in read_jsonl(tmp_path / "cam" / "detections.jsonl"))
