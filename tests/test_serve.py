"""yolotune run on the CPU: ordering, backpressure, reconnects over a loopback stream server, timeouts, corrupt files,
graceful shutdown, metrics, the scheduler's deadline and fairness."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from stand_ins import SlowDetector
from yolotune.data.synth import write_video
from yolotune.io.streams import StreamFrame
from yolotune.serve.queues import Backlog, FrameQueue
from yolotune.serve.runtime import RunOptions, StreamRuntime
from yolotune.serve.scheduler import BatchScheduler
from yolotune.io.streams import Backoff
from yolotune.io.stream_specs import SourceSpec, parse_source, read_source_list


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    return {
        "a": write_video(d / "a.mp4", frames=24, size=(96, 160), seed=1),
        "b": write_video(d / "b.mp4", frames=17, size=(96, 160), seed=2),
        "ts": write_video(d / "live.ts", frames=40, size=(96, 160), seed=3),  # MPEG-TS: streamable over a socket
    }


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class FlakyEngine(SlowDetector):
    """Fails the batches whose numbers are listed (from 1)."""

    def __init__(self, fail: set[int]):
        super().__init__(0.0)
        self.fail = fail

    def detect(self, frames):
        if len(self.batches) + 1 in self.fail:
            self.batches.append(len(frames))
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return super().detect(frames)


def test_engine_failures_are_reported_per_stream_and_three_in_a_row_stop_the_run(clips, tmp_path):
    engine = FlakyEngine({2})
    typed = StreamRuntime(engine, [parse_source(str(clips["b"]))], RunOptions(out=tmp_path / "one", max_batch=4)).run()
    summary = typed.to_dict()  # what `run --json` prints
    s = summary["streams"][0]
    failed = engine.batches[1]  # the frames of the failed batch: as many as had arrived, up to 4 (a busy machine: fewer)
    assert 1 <= failed <= 4 and summary["engine_errors"] == failed
    assert s["processed"] == 17 - failed and s["state"] == "finished"
    assert typed.engine_errors == failed and typed.streams[0].processed == s["processed"] and typed.any_failed
    rows = read_jsonl(tmp_path / "one" / "b" / "detections.jsonl")
    err = [r for r in rows if r.get("event") == "engine-error"]
    assert len(err) == 1 and "illegal memory access" in err[0]["message"] and err[0]["ok"] is False
    summary = StreamRuntime(FlakyEngine({1, 2, 3}), [parse_source(str(clips["a"]))], RunOptions(out=None, max_batch=4)).run().to_dict()
    assert summary["stopped_by"].startswith("engine failed 3 batches in a row") and summary["frames"] == 0


def test_parse_sources(tmp_path):
    assert parse_source("rtsp://cam.local/stream1").kind == "url" and parse_source("rtsp://h/s").live
    assert parse_source("/dev/video2").kind == "camera" and parse_source("v4l2:0").uri == "/dev/video0"
    assert parse_source(str(tmp_path)).kind == "folder"
    f = parse_source("clips/door cam.mp4", loop=True)
    assert (f.kind, f.name, f.loop, f.live) == ("file", "door_cam", True, False)
    (tmp_path / "list.txt").write_text("# cameras\nrtsp://a/1\n\n  /data/b.mp4  \n")
    assert read_source_list(tmp_path / "list.txt") == ["rtsp://a/1", "/data/b.mp4"]
    delays = [Backoff(0.5, 4.0).delay(n) for n in range(10) for _ in range(20)]
    assert min(delays) >= 0 and max(delays) <= 4.0 and len(set(delays)) > 100  # jittered, capped


DECODERS = pytest.mark.parametrize("decoders", ["threads", "processes"])


@pytest.mark.slow
@DECODERS
def test_file_streams_every_frame_in_order_with_the_real_model(clips, tmp_path, decoders):
    from yolotune import Detector

    specs = [parse_source(str(clips["a"])), parse_source(str(clips["b"])), parse_source(str(clips["a"]), name="a")]
    with Detector("default", device="cpu", batch=4) as det:
        summary = StreamRuntime(det, specs, RunOptions(out=tmp_path, max_batch=4, queue_size=2, decoders=decoders)).run().to_dict()
    assert summary["decoders"] == decoders
    loop = summary["engine_thread_s"]  # where the engine thread's time went
    assert loop["submitting"] > 0 and 0 < sum(loop.values()) <= summary["seconds"] + 0.5
    by = {s["name"]: s for s in summary["streams"]}
    assert set(by) == {"a", "b", "a-2"} and summary["failed"] == [] and summary["dropped"] == 0  # "a" was given
    depth = 2 if decoders == "threads" else 8  # in processes, the frames in a stream's ring slots (4 x queue)
    for name, n in (("a", 24), ("b", 17), ("a-2", 24)):
        assert by[name]["state"] == "finished" and by[name]["processed"] == n and by[name]["max_queue_depth"] <= depth
        rows = [r for r in read_jsonl(tmp_path / name / "detections.jsonl") if "frame" in r]
        assert [r["frame"] for r in rows] == list(range(n))  # every frame, in order, none dropped
        assert all(r["latency_ms"] >= 0 for r in rows)
    assert sum(s["detections"] for s in summary["streams"]) > 20  # the trained model finds the moving objects
    assert summary["mean_batch"] > 1.5  # frames of different streams shared batches


@DECODERS
def test_overload_drops_oldest_on_live_sources_and_memory_stays_bounded(clips, tmp_path, decoders):
    slow = SlowDetector(0.05)
    live = SourceSpec(str(clips["a"]), "url", "cam")  # a live source: replays on EOF, drops when behind
    rt = StreamRuntime(slow, [live], RunOptions(out=tmp_path, max_batch=1, queue_size=3, duration_s=2.0,
                                                backoff_base_s=0.01, decoders=decoders))
    summary = rt.run().to_dict()
    s = summary["streams"][0]
    assert s["dropped"] > 0 and s["max_queue_depth"] <= 3
    queue_drops = s["dropped"] - s["dropped_before_decode"]
    assert s["decoded"] == s["processed"] + queue_drops + s["unprocessed_at_stop"]  # every frame delivered accounted
    assert s["dropped_before_decode"] > queue_drops  # most drops cost no decoding: held back, not decoded to be dropped
    assert s["received"] >= s["processed"] + s["dropped"]
    frames = [r["frame"] for r in read_jsonl(tmp_path / "cam" / "detections.jsonl") if "frame" in r]
    assert frames == sorted(frames) and len(set(frames)) == len(frames)  # in order, with gaps where frames dropped
    assert "yolotune_frames_dropped_total{stream=\"cam\"}" in rt.metrics.text()


class FlakyStreamServer:
    """Serves an MPEG-TS file over TCP on loopback; the first connection is cut half-way (a camera going away)."""

    def __init__(self, payload: bytes):
        self.payload = payload
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            data = self.payload[: len(self.payload) // 2] if self.connections == 1 else self.payload
            try:
                for k in range(0, len(data), 4096):
                    conn.sendall(data[k : k + 4096])
                    time.sleep(0.002)
            except OSError:
                pass
            conn.close()  # abrupt end of the stream

    def close(self):
        self.stop.set()
        self.sock.close()


@DECODERS
def test_reconnects_after_the_server_drops_and_other_streams_carry_on(clips, tmp_path, decoders):
    server = FlakyStreamServer(clips["ts"].read_bytes())
    try:
        specs = [SourceSpec(f"tcp://127.0.0.1:{server.port}", "url", "tcpcam"), parse_source(str(clips["b"]))]
        rt = StreamRuntime(SlowDetector(0.0), specs, RunOptions(out=tmp_path, max_batch=4, duration_s=3.5,
                                                               open_timeout_s=2, read_timeout_s=2, backoff_base_s=0.05,
                                                               decoders=decoders))
        summary = rt.run().to_dict()
    finally:
        server.close()
    cam, other = summary["streams"]
    assert server.connections >= 2 and cam["reconnects"] >= 1 and cam["processed"] > 20
    events = [r["event"] for r in read_jsonl(tmp_path / "tcpcam" / "detections.jsonl") if "event" in r]
    assert "reconnecting" in events and events.count("running") >= 2
    assert other["state"] == "finished" and other["processed"] == 17
    assert summary["stopped_by"] == "duration"


def test_a_url_that_never_answers_times_out_with_a_clear_error(clips, tmp_path):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # connections queue in the backlog; nothing is ever sent
    try:
        specs = [SourceSpec(f"tcp://127.0.0.1:{silent.getsockname()[1]}", "url", "dead"), parse_source(str(clips["b"]))]
        t0 = time.perf_counter()
        summary = StreamRuntime(SlowDetector(0.0), specs, RunOptions(out=tmp_path, open_timeout_s=0.5, read_timeout_s=0.5,
                                                                     max_retries=1, backoff_base_s=0.05)).run().to_dict()
        elapsed = time.perf_counter() - t0
    finally:
        silent.close()
    dead, other = summary["streams"]
    assert dead["state"] == "failed" and "gave up after 1 attempts" in dead["error"]
    assert dead["error"].startswith("never connected: timed out: no answer within 0.5 s of opening")
    assert dead["reconnect_attempts"] == 1 and dead["reconnects"] == 0 and dead["outages"] == 0
    assert summary["failed"] == ["dead"] and other["state"] == "finished" and other["processed"] == 17
    assert elapsed < 30  # the run ended: a dead source does not hang it


@DECODERS
def test_corrupt_and_truncated_videos_fail_alone(clips, tmp_path, decoders):
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(clips["a"].read_bytes()[: 3000])
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00not a video" * 500)
    specs = [parse_source(str(truncated)), parse_source(str(garbage)), parse_source(str(clips["b"]))]
    summary = StreamRuntime(SlowDetector(0.0), specs, RunOptions(out=tmp_path / "out", decoders=decoders)).run().to_dict()
    by = {s["name"]: s for s in summary["streams"]}
    assert by["truncated"]["state"] == "failed" and by["garbage"]["state"] == "failed"
    assert by["garbage"]["error"] and by["b"]["processed"] == 17
    failed = read_jsonl(tmp_path / "out" / "garbage" / "detections.jsonl")
    assert failed[-1]["event"] == "failed" and failed[-1]["ok"] is False and failed[-1]["message"]


def test_scheduler_takes_the_oldest_frames_of_all_streams():
    """Earliest decode first across streams, each stream in order: a stream late in the turn is not left behind
    (with 100 streams, the old one-per-stream turn left frames waiting 200+ ms while batches left every 6-10 ms)."""
    backlog = Backlog()
    queues = [FrameQueue(10, "block", backlog) for _ in range(5)]
    sched = BatchScheduler(queues, backlog, max_batch=3, max_wait_s=3.0)
    img = np.zeros((4, 4, 3), np.uint8)
    now = time.perf_counter()
    for s in range(4):  # streams 0-3: two recent frames each
        for k in range(2):
            queues[s].put(StreamFrame(s, k, img, now + 0.01 * (s + 1) + 0.001 * k))
    queues[4].put(StreamFrame(4, 0, img, now - 0.2))  # stream 4: two old frames
    queues[4].put(StreamFrame(4, 1, img, now - 0.1))
    stop = threading.Event()
    assert [(f.stream, f.index) for f in sched.next_batch(stop)] == [(4, 0), (4, 1), (0, 0)]
    assert [(f.stream, f.index) for f in sched.next_batch(stop)] == [(0, 1), (1, 0), (1, 1)]


def test_scheduler_deadline_and_round_robin():
    backlog = Backlog()
    queues = [FrameQueue(10, "block", backlog) for _ in range(3)]
    sched = BatchScheduler(queues, backlog, max_batch=4, max_wait_s=3.0)
    img = np.zeros((4, 4, 3), np.uint8)
    now = time.perf_counter()
    for i in range(6):
        queues[0].put(StreamFrame(0, i, img, now))
    queues[1].put(StreamFrame(1, 0, img, now))
    queues[2].put(StreamFrame(2, 0, img, now))
    stop = threading.Event()
    first = sched.next_batch(stop)  # 8 waiting: a full batch at once, every stream served
    assert [(f.stream, f.index) for f in first] == [(0, 0), (1, 0), (2, 0), (0, 1)]
    t0 = time.perf_counter()
    second = sched.next_batch(stop)  # 4 left in stream 0 -> full batch, in order
    assert [f.index for f in second] == [2, 3, 4, 5] and time.perf_counter() - t0 < 1.5  # not held to the deadline
    sched.max_wait_s = 0.05
    queues[1].put(StreamFrame(1, 1, img, time.perf_counter()))
    t0 = time.perf_counter()
    lone = sched.next_batch(stop)  # one frame: leaves at its deadline, not when a batch fills
    assert [(f.stream, f.index) for f in lone] == [(1, 1)] and time.perf_counter() - t0 >= 0.04
    assert sched.next_batch(stop, block=False) == []  # nothing due: the caller may collect meanwhile
    queues[2].put(StreamFrame(2, 1, img, time.perf_counter() - 1.0))
    assert [(f.stream, f.index) for f in sched.next_batch(stop, block=False)] == [(2, 1)]  # past its deadline
    for q in queues:
        q.close()
    assert sched.next_batch(stop) is None


def test_queue_policies():
    wake = Backlog()
    live = FrameQueue(2, "drop_oldest", wake)
    img = np.zeros((2, 2, 3), np.uint8)
    for i in range(5):
        assert live.put(StreamFrame(0, i, img, 0.0))
    assert live.dropped == 3 and wake.total == 2 and [live.pop().index for _ in range(2)] == [3, 4] and wake.total == 0
    files = FrameQueue(1, "block", wake)
    files.put(StreamFrame(0, 0, img, 0.0))
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    assert files.put(StreamFrame(0, 1, img, 0.0), stop) is False and files.dropped == 0  # waited, never dropped
    with pytest.raises(ValueError, match="queue policy"):
        FrameQueue(1, "newest", wake)


def test_metrics_endpoint_serves_per_stream_metrics(clips, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rt = StreamRuntime(SlowDetector(0.0), [parse_source(str(clips["b"]))], RunOptions(out=None, metrics_port=port))
    summary = rt.run().to_dict()
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'yolotune_frames_total{stream="b"} 17.0' in body
    assert 'yolotune_frame_latency_seconds_count{stream="b"} 17.0' in body and "yolotune_queue_depth" in body
    assert summary["metrics_port"] == port


def test_watched_folder_picks_up_new_images(tmp_path):
    from PIL import Image

    folder = tmp_path / "drop"
    folder.mkdir()
    Image.new("RGB", (64, 48), (10, 20, 30)).save(folder / "0001.jpg")

    def add_later():
        time.sleep(0.6)
        Image.new("RGB", (64, 48), (200, 20, 30)).save(folder / "0002.png")
        (folder / "0003.jpg").write_bytes(b"broken")

    threading.Thread(target=add_later, daemon=True).start()
    summary = StreamRuntime(SlowDetector(0.0), [parse_source(str(folder))], RunOptions(out=tmp_path / "o", duration_s=1.5)).run().to_dict()
    assert summary["streams"][0]["processed"] == 2
    rows = read_jsonl(tmp_path / "o" / "drop" / "detections.jsonl")
    assert [r["frame"] for r in rows if "frame" in r] == [0, 1]
    assert any(r.get("event") == "bad-input" and "0003.jpg" in r["message"] for r in rows)


def test_sigint_flushes_every_output_and_exits_zero(clips, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "yolotune.cli", "run", "default", "--source", str(clips["a"]), "--loop", "--out", str(out),
           "-f", "jsonl", "-f", "video", "--device", "cpu", "--batch", "2", "--no-dashboard", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    jsonl = out / "a" / "detections.jsonl"
    deadline = time.time() + 90
    while time.time() < deadline and not (jsonl.exists() and jsonl.stat().st_size > 2000):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-2000:]
    summary = json.loads(stdout)
    assert summary["stopped_by"] == "SIGINT"
    processed = summary["streams"][0]["processed"]
    rows = [r for r in read_jsonl(jsonl) if "frame" in r]  # every line complete JSON
    assert len(rows) == processed > 0
    import av

    with av.open(str(out / "a" / "videos" / "a.mp4")) as c:  # the annotated video was finalised
        assert sum(1 for _ in c.decode(video=0)) == processed


@pytest.mark.slow
def test_plan_predicts_from_measurements_and_verifies_by_running(tmp_path):
    from typer.testing import CliRunner

    from yolotune.cli import app

    res = CliRunner().invoke(app, ["plan", "default", "--device", "cpu", "--fps", "2", "--resolution", "320x192",
                                   "--batch", "2", "--seconds", "3", "--max-streams", "3", "--out", str(tmp_path / "plan.json")])
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "plan.json").read_text())
    assert set(r["limits"]) == {"compute", "decode", "host_memory"}  # no device memory on the CPU
    assert r["binding"] == min(r["limits"], key=r["limits"].get)
    assert r["limits"]["compute"] == pytest.approx(r["frames_per_s"] / 2, abs=0.051)  # reported to 0.1
    assert [p["batch"] for p in r["sweep"]] == [1, 2] and r["predicted_streams"] == min(3, int(r["limits"][r["binding"]]))
    v = r["verification"][0]
    assert v["streams"] == r["predicted_streams"] and v["frames"] > 0 and v["dropped"] == 0
    assert v["holds"] == (v["max_lag_s"] < 1.0) and "verified" in res.output
    assert "where the latency goes" in res.output and set(v["latency_parts_ms"]) == {"handover", "queued", "engine"}


@pytest.mark.slow
def test_plan_that_fits_no_stream_says_at_what_frame_rate_one_fits(tmp_path):
    from typer.testing import CliRunner

    from yolotune.cli import app

    res = CliRunner().invoke(app, ["plan", "default", "--device", "cpu", "--fps", "5000", "--resolution", "160x96",
                                   "--batch", "1", "--no-verify", "--out", str(tmp_path / "plan.json")],
                             env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "plan.json").read_text())
    assert r["predicted_streams"] == 0
    fit = r["one_stream"]
    rates = {"compute": r["frames_per_s"], "decode": r["host_pipeline_fps"] or r["decode_fps_per_core"] * r["decode_cores"]}
    assert fit["bound_by"] == min(rates, key=rates.get) and fit["fps"] == pytest.approx(min(rates.values()), rel=0.01)
    assert f"one stream fits at up to {fit['fps']:.1f} FPS" in res.output and fit["bound_by"] in res.output


def test_run_cli_usage_errors(tmp_path):
    from typer.testing import CliRunner

    from yolotune.cli import app

    res = CliRunner().invoke(app, ["run", "default", "--device", "cpu"])
    assert res.exit_code == 2 and "no sources" in res.output
    res = CliRunner().invoke(app, ["run", "default", "--device", "cpu", "-s", "x.mp4", "-f", "gif"])
    assert res.exit_code == 2 and "unknown stream output gif" in res.output
    res = CliRunner().invoke(app, ["run", "default", "--device", "cpu", "-s", "x.mp4", "--decoder-processes", "0"])
    assert res.exit_code == 2 and "--decoder-processes" in res.output
    res = CliRunner().invoke(app, ["plan", "default", "--device", "cpu", "--resolution", "big"])
    assert res.exit_code == 2 and "--resolution" in res.output


def test_dashboard_shows_every_stream_state(clips, tmp_path):
    from rich.console import Console

    from yolotune.serve.dashboard import stream_table

    specs = [parse_source(str(clips["b"])), parse_source(str(tmp_path / "nope.mp4"))]
    ticks = []
    rt = StreamRuntime(SlowDetector(0.01), specs, RunOptions(out=None, max_batch=2))
    rt.run(on_tick=lambda r: ticks.append(1))
    console = Console(record=True, width=160)
    console.print(stream_table(rt))
    text = console.export_text()
    assert "2 streams" in text and "finished" in text and "failed" in text and "FileNotFoundError" in text


def test_i420_frames_through_the_runtime_match_rgb(clips, tmp_path):
    from yolotune import Detector

    counts = {}
    with Detector("default", device="cpu", batch=4) as det:
        for fmt in ("rgb24", "yuv420p"):
            s = StreamRuntime(det, [parse_source(str(clips["a"]))], RunOptions(out=tmp_path / fmt, formats=("jsonl", "video"),
                                                                               pixel_format=fmt)).run().to_dict()
            assert s["pixel_format"] == fmt and s["streams"][0]["processed"] == 24
            rows = [r for r in read_jsonl(tmp_path / fmt / "a" / "detections.jsonl") if "frame" in r]
            counts[fmt] = sum(len(r["detections"]) for r in rows)
            assert (tmp_path / fmt / "a" / "videos" / "a.mp4").stat().st_size > 1000
    assert counts["rgb24"] > 20 and abs(counts["yuv420p"] - counts["rgb24"]) <= 0.05 * counts["rgb24"]
    with pytest.raises(ValueError, match="pixel format"):
        StreamRuntime(SlowDetector(0), [parse_source(str(clips["a"]))], RunOptions(out=None, pixel_format="nv12"))


def test_http_stream_source(clips, tmp_path):
    """An MPEG-TS stream over HTTP (loopback server): a live source, replayed when the response ends."""
    import functools
    import http.server

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(clips["ts"].parent))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{clips['ts'].name}"
        spec = parse_source(url)
        assert spec.kind == "url" and spec.name == f"127.0.0.1-{server.server_address[1]}-live.ts"
        summary = StreamRuntime(SlowDetector(0.0), [spec], RunOptions(out=None, duration_s=2.0, backoff_base_s=0.05)).run().to_dict()
    finally:
        server.shutdown()
    s = summary["streams"][0]
    assert s["processed"] >= 40 and s["reconnects"] >= 1  # the 40-frame clip played, ended, and was reopened


def test_a_failing_sink_is_reported_and_does_not_stop_the_run(clips, tmp_path, monkeypatch):
    from yolotune.io.stream_sinks import StreamSinks

    real = StreamSinks.write

    def flaky(self, frame, det, lat):
        if frame.index % 5 == 0:
            raise OSError(28, "No space left on device")
        real(self, frame, det, lat)

    monkeypatch.setattr(StreamSinks, "write", flaky)
    summary = StreamRuntime(SlowDetector(0.0), [parse_source(str(clips["b"]))], RunOptions(out=tmp_path)).run().to_dict()
    assert summary["streams"][0]["processed"] == 17 and summary["sink_errors"] == 4  # frames 0, 5, 10, 15
    rows = read_jsonl(tmp_path / "b" / "detections.jsonl")
    assert len([r for r in rows if "frame" in r]) == 13
    assert any(r.get("event") == "sink-error" and "No space left" in r["message"] for r in rows)


def test_a_decoder_process_that_dies_fails_its_streams_and_the_others_carry_on(clips, tmp_path):
    specs = [SourceSpec(str(clips["a"]), "file", "doomed", loop=True), parse_source(str(clips["b"]))]
    rt = StreamRuntime(SlowDetector(0.01), specs, RunOptions(out=tmp_path, max_batch=2, queue_size=2, duration_s=4.0,
                                                            decoders="processes", decoder_processes=2))
    doomed = rt.pool.procs[rt.pool.owner[0]]
    assert rt.pool.owner[0] != rt.pool.owner[1]  # one process per source here

    def kill_when_running():
        while rt.workers[0].status.frames < 5:
            time.sleep(0.02)
        doomed.kill()

    threading.Thread(target=kill_when_running, daemon=True).start()
    summary = rt.run().to_dict()
    dead, other = summary["streams"]
    assert dead["state"] == "failed" and "ended unexpectedly" in dead["error"]
    assert other["state"] == "finished" and other["processed"] == 17
    events = [r for r in read_jsonl(tmp_path / "doomed" / "detections.jsonl") if "event" in r]
    assert events[-1]["event"] == "failed"


def test_rings_made_before_the_run_are_used_pinned_and_removed_after(clips):
    """A file's ring is made (and page-locked) by the runtime before its clock starts; a live source's, whose size
    is unknown until its first frame, by its decoder process (and page-locked then, off the receiver's thread)."""
    from yolotune.serve.decoders import DecoderOptions, DecoderPool, frame_nbytes

    pinned, unpinned = [], []

    def pin(buffer):
        pinned.append(len(buffer))
        return lambda: unpinned.append(len(buffer))

    specs = [SourceSpec(str(clips["a"]), "file", "f"), SourceSpec(str(clips["ts"]), "url", "live")]
    backlog, stop = Backlog(), threading.Event()
    queues = [FrameQueue(16, "block", backlog), FrameQueue(4, "drop_oldest", backlog)]
    first_core = min(os.sched_getaffinity(0))
    pool = DecoderPool(specs, queues, stop, DecoderOptions(5.0, 5.0, None, 0.1, 0.5, "yuv420p", 16, 1, cpus=(first_core,)),
                       on_event=lambda *a: None, processes=2, pin=pin)
    nbytes = frame_nbytes((96, 160), "yuv420p")
    assert nbytes == 144 * 160 and frame_nbytes((95, 160), "yuv420p") == 95 * 160 * 3
    assert pool.make_rings({0: nbytes}) >= 0 and pinned == [16 * nbytes]
    premade = pool._owned[0]
    got: dict[int, list[str]] = {0: [], 1: []}
    firsts: dict[int, np.ndarray] = {}
    pool.start()
    deadline = time.perf_counter() + 20
    while time.perf_counter() < deadline and (len(got[0]) < 24 or len(got[1]) < 3):
        for i, q in enumerate(queues):
            while len(q):
                f = q.pop()
                assert f.image.shape == (144, 160)
                if i == 0:
                    firsts.setdefault(f.index, f.image.copy())
                got[i].append(f.slot[0])
                pool.release([f])
        time.sleep(0.01)
    import psutil  # the processes decode at a lower priority than the runtime (DecoderOptions.nice, 5)

    assert [psutil.Process(p.pid).nice() for p in pool.procs] == [min(19, os.nice(0) + 5)] * 2
    # and only on the cores they were given (DecoderOptions.cpus), their decoding threads included
    assert all(psutil.Process(p.pid).cpu_affinity() == [first_core] for p in pool.procs)
    assert all(t.id and os.sched_getaffinity(t.id) == {first_core} for p in pool.procs for t in psutil.Process(p.pid).threads())
    stop.set()
    pool.join(5.0)
    assert len(got[0]) == 24 and set(got[0]) == {premade}  # every frame of the file in the runtime's ring
    assert got[1] and premade not in got[1] and pinned == [16 * nbytes] * 2 and sorted(unpinned) == sorted(pinned)
    assert not Path("/dev/shm", premade.lstrip("/")).exists()
    import av

    with av.open(str(clips["a"])) as c:  # the planes went into the slots byte for byte
        want = [f.to_ndarray(format="yuv420p") for f in c.decode(video=0)]
    assert sorted(firsts) == list(range(24)) and all(np.array_equal(firsts[k], want[k]) for k in range(24))


def test_decoders_leave_the_runtime_its_cores():
    from yolotune.serve.decoders import decoder_cpus

    sixteen = set(range(16))
    assert decoder_cpus(2, sixteen) == tuple(range(2, 16))  # the runtime's threads keep cores 0 and 1
    assert decoder_cpus(0, sixteen) is None  # 0: decoders share every core
    assert decoder_cpus(2, {0, 1, 2, 3, 4}) is None  # too few left for decoders: no confinement
    assert decoder_cpus(1, {3, 5, 7, 9, 11}) == (5, 7, 9, 11)  # the cores this process may use, not 0..n


def test_latency_is_split_into_handover_queue_and_engine(clips, tmp_path):
    """Every result's latency in three parts, so a slow p99 says where to look; they add up to the whole."""
    specs = [parse_source(str(clips["a"])), parse_source(str(clips["b"]))]
    s = StreamRuntime(SlowDetector(0.02), specs, RunOptions(out=None, max_batch=4, queue_size=2)).run().to_dict()
    parts = s["latency_parts_ms"]
    assert set(parts) == {"handover", "queued", "engine"} and all(p["p50"] >= 0 for p in parts.values())
    assert parts["engine"]["p50"] >= 20  # the stand-in engine's 20 ms per batch
    assert sum(p["p50"] for p in parts.values()) <= s["latency_p99_ms"] + 1
    assert all(0 < st["steady_fps"] for st in s["streams"])


def test_plan_steps_down_by_what_the_failed_run_says():
    from yolotune.serve.plan import next_trial

    ok = dict(max_lag_s=0.1, dropped=0, min_stream_fps=30.0, total_fps=3000.0)
    # only the tail over budget: 15% fewer, or 30% when p99 was more than twice the budget
    assert next_trial({**ok, "streams": 100, "latency_p99_ms": 80.0}, 30, 50) == 85
    assert next_trial({**ok, "streams": 127, "latency_p99_ms": 617.0}, 30, 50) == 88
    # streams falling behind: what the run delivered, 5% under (1,800 frames/s at 30 FPS: 60 streams -> 57)
    behind = {**ok, "streams": 100, "max_lag_s": 3.0, "min_stream_fps": 12.0, "total_fps": 1800.0, "latency_p99_ms": 20.0}
    assert next_trial(behind, 30, 50) == 57
    assert next_trial({**behind, "total_fps": 2900.0}, 30, 50) == 85  # at least 15% fewer
    assert next_trial({**ok, "streams": 1, "latency_p99_ms": 900.0}, 30, 50) == 1  # cannot go lower: plan stops


def test_page_locked_frames_are_found_by_lookup_not_by_the_driver(monkeypatch):
    """The engine asks per frame whether it may DMA straight from it: a numpy frame is page-locked only inside a
    range register_host_memory recorded (a ring), wholly; asked without a driver call (no CUDA here)."""
    from yolotune.pipeline import buffers

    ring = np.zeros((4, 90, 160), np.uint8)
    start = ring.ctypes.data
    other = np.zeros((90, 160), np.uint8)
    assert not buffers.is_page_locked(ring[1])
    monkeypatch.setattr(buffers, "_registered", ((start - 10_000, start - 5_000), (start, start + ring.nbytes)))
    assert all(buffers.is_page_locked(ring[i]) for i in range(4))
    assert buffers.is_page_locked(ring[1:3])
    assert not buffers.is_page_locked(other)
    straddling = np.ndarray((2, 90, 160), np.uint8, buffer=np.zeros(ring.nbytes * 2, np.uint8))
    monkeypatch.setattr(buffers, "_registered", ((start, start + ring.nbytes), (straddling.ctypes.data, straddling.ctypes.data + 100)))
    assert not buffers.is_page_locked(straddling)  # only its first 100 bytes are in a range
    assert not buffers.is_page_locked(torch.zeros(3))  # a tensor answers itself: not pinned


def test_frames_from_registered_rings_are_copied_in_one_call():
    from yolotune.pipeline.buffers import copy_all

    dsts = [torch.zeros(2, 3, dtype=torch.uint8) for _ in range(3)]
    srcs = [torch.full((2, 3), i, dtype=torch.uint8) for i in range(3)]
    copy_all(dsts, srcs)
    copy_all([], [])  # a batch with no such frame
    assert [int(d.float().mean()) for d in dsts] == [0, 1, 2]


@pytest.mark.slow
def test_plan_sweeps_frames_registered_like_the_rings(monkeypatch):
    """plan's detect sweep uploads from memory registered the way the decoder processes' rings are, so it measures
    the runtime's upload path, and unregisters it afterwards."""
    from yolotune.serve import plan

    registered, unregistered, seen = [], [], []

    def register(buffer, device):
        registered.append(buffer)
        return lambda: unregistered.append(buffer)

    class Fake:
        device, batch = torch.device("cpu"), 2

        def detect(self, frames):
            seen.extend(frames)

    monkeypatch.setattr(plan, "register_host_memory", register)
    rows = plan._detect_sweep(Fake(), 4, 6, page_locked=True)
    assert [r["batch"] for r in rows] == [1, 2] and len(registered) == 1 and unregistered == registered
    assert seen and all(f.shape == (4, 6, 3) and np.shares_memory(f, registered[0]) for f in seen)
    assert seen[0].any()  # the picture was copied in, not left blank
    registered.clear()
    plan._detect_sweep(Fake(), 4, 6, page_locked=False)
    assert not registered


@pytest.mark.parametrize("resolution", ["0x0", "-640x480", "1x1", "641x480", "100000x720", "big"])
def test_plan_refuses_impossible_resolutions_and_leaves_nothing_behind(tmp_path, monkeypatch, resolution):
    import tempfile

    from typer.testing import CliRunner

    from yolotune.cli import app

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    res = CliRunner().invoke(app, ["plan", "default", "--device", "cpu", "--resolution", resolution, "--batch", "1"])
    assert res.exit_code == 2 and "--resolution" in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert not list(tmp_path.glob("yolotune-plan-*"))


@pytest.mark.slow
def test_plan_removes_its_work_folder_on_every_exit_path(tmp_path, monkeypatch):
    import tempfile

    from yolotune import Detector
    from yolotune.serve import plan as plan_module

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with Detector("default", device="cpu", batch=1) as det:
        report = plan_module.plan(det, 2, (160, 96), verify=False)
        assert report.predicted_streams >= 1 and report.to_dict()["predicted_streams"] == report.predicted_streams
        assert report.knee_batch <= report.best_batch and report.verified_streams is None and not list(tmp_path.glob("yolotune-plan-*"))

        def interrupted(*_a, **_k):
            raise KeyboardInterrupt

        monkeypatch.setattr(plan_module, "_verify", interrupted)
        with pytest.raises(KeyboardInterrupt):
            plan_module.plan(det, 2, (160, 96), verify=True, verify_seconds=1)
        assert not list(tmp_path.glob("yolotune-plan-*"))
        with pytest.raises(ValueError, match="resolution"):
            plan_module.plan(det, 2, (0, 0))


def test_plan_measures_one_detector_at_the_batch_it_sweeps_to(tmp_path):
    from yolotune.serve.plan import planning_detector
    from yolotune.assets import resolve
    from yolotune.options import DetectorOptions
    from yolotune.tune.artifact import write_artifact

    with planning_detector("default", "cpu") as det:
        assert det.batch == 8  # the CPU sweep's largest batch, chosen before the Detector is built (one build)
    with planning_detector("default", "cpu", batch=2) as det:
        assert det.batch == 2
    write_artifact(tmp_path / "art", resolve("default"), DetectorOptions(batch=4), {"tuned_on": "CPU"})
    with planning_detector(str(tmp_path / "art"), "cpu") as det:
        assert det.batch == 4  # an artifact keeps its own


def test_plan_measures_a_camera_like_stream(tmp_path):
    """plan's clip decodes like a camera's: a keyframe a second, no B-frames, and a camera's bitrate, not the few
    kbit/s a generated clip compresses to."""
    import av

    from yolotune.serve.plan import plan_clip

    clip = plan_clip(tmp_path, 320, 240, 10)
    with av.open(str(clip)) as c:
        s = c.streams.video[0]
        packets = [p for p in c.demux(s) if p.size]
        assert not s.codec_context.has_b_frames
        seconds = len(packets) / 10
        keyframes = [i for i, p in enumerate(packets) if p.is_keyframe] + [len(packets)]
        assert keyframes[0] == 0 and max(b - a for a, b in zip(keyframes, keyframes[1:])) <= 10
        assert sum(p.size for p in packets) * 8 / seconds > 100_000


@pytest.mark.slow
def test_plan_with_a_recording_measures_it_at_its_size_and_rate(tmp_path):
    from typer.testing import CliRunner

    from yolotune.cli import app

    clip = write_video(tmp_path / "door.mp4", frames=12, size=(96, 160), fps=4, seed=5, camera=True)
    res = CliRunner().invoke(app, ["plan", "default", "--device", "cpu", "--clip", str(clip), "--batch", "1",
                                   "--no-verify", "--out", str(tmp_path / "plan.json")])
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "plan.json").read_text())
    assert r["resolution"] == [160, 96] and r["fps"] == pytest.approx(4) and r["clip"] == str(clip)
    assert str(clip) in res.output.replace("\n", "")


@pytest.mark.parametrize("args, says", [
    (["--fps", "25"], "runs at 4 FPS, not 25"),
    (["--resolution", "320x192"], "is 160x96, not 320x192"),
    (["--ray", "local"], "--clip plans one machine"),
])
def test_plan_refuses_a_recording_that_is_not_what_it_is_asked_to_plan(tmp_path, args, says):
    from typer.testing import CliRunner

    from yolotune.cli import app

    clip = write_video(tmp_path / "door.mp4", frames=4, size=(96, 160), fps=4, seed=5)
    res = CliRunner().invoke(app, ["plan", "default", "--device", "cpu", "--clip", str(clip), "--no-verify", *args])
    assert res.exit_code == 2 and says in res.output.replace("\n", " "), res.output


@pytest.mark.parametrize("content", [b"not a video at all", b""])
def test_plan_refuses_a_clip_that_is_no_video(tmp_path, content):
    from typer.testing import CliRunner

    from yolotune.cli import app

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(content)
    for clip in (bad, tmp_path / "missing.mp4"):
        res = CliRunner().invoke(app, ["plan", "default", "--device", "cpu", "--clip", str(clip), "--no-verify"])
        assert res.exit_code == 2 and "cannot plan with" in res.output, res.output
        assert "Traceback" not in res.output
