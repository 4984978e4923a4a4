"""Stream names: unique, safe (nothing is written outside --out), readable, and the user's when given."""

import socket
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from yolotune.cli import app
from yolotune.io.stream_specs import name_streams, parse_source, read_source_list


def names(*texts):
    return [s.name for s in name_streams([parse_source(t) for t in texts])]


def test_default_names_keep_host_port_and_path_and_never_climb_out():
    assert names("tcp://127.0.0.1:18082") == ["127.0.0.1-18082"]
    assert names("rtsp://admin:secret@cam.local:554/Streaming/Channels/101?token=abc") == [
        "cam.local-554-Streaming-Channels-101"]  # no credentials or query in names, paths or labels
    for text in ("http://127.0.0.1:8080/..", "http://h/a/../..", "../..", "/tmp/..", ".", "..", "x/.."):
        (name,) = names(text)
        assert name not in ("", ".", "..") and "/" not in name and not name.startswith(".")
    assert names("udp://@:1234") == ["1234"] or names("udp://@:1234")[0]


def test_same_stems_from_different_folders_get_distinct_readable_names():
    assert names("a/clip.mp4", "b/clip.mp4", "c/clip-1.mp4") == ["a-clip", "b-clip", "clip-1"]
    assert names("x/a/clip.mp4", "y/a/clip.mp4") == ["x-a-clip", "y-a-clip"]
    assert names("clip.mp4", "clip.mp4") == ["clip", "clip-2"]  # the same file twice: still two streams
    assert names("Cam.mp4", "cam.mp4") == ["Cam", "cam-2"]  # case-insensitive file systems


def test_users_name_their_streams(tmp_path):
    assert names("door=rtsp://cam/1", "rtsp://cam/2") == ["door", "cam-2"]
    listing = tmp_path / "cams.txt"
    listing.write_text("# name, tab, source\nfront\trtsp://cam/1\nback=tcp://127.0.0.1:9000\nrtsp://cam/3\n")
    specs = name_streams([parse_source(t) for t in read_source_list(listing)])
    assert [(s.name, s.uri) for s in specs] == [("front", "rtsp://cam/1"), ("back", "tcp://127.0.0.1:9000"),
                                                ("cam-3", "rtsp://cam/3")]
    with pytest.raises(ValueError, match="stream name"):
        name_streams([parse_source("../../etc=rtsp://cam/1")])
    with pytest.raises(ValueError, match="twice"):
        name_streams([parse_source("door=rtsp://cam/1"), parse_source("door=rtsp://cam/2")])
    (tmp_path / "a=b.mp4").write_bytes(b"")  # a file whose name has '=' is the file, not name=source
    assert parse_source(str(tmp_path / "a=b.mp4")).uri == str(tmp_path / "a=b.mp4")


def test_a_stream_named_dotdot_writes_inside_out(tmp_path):
    """The reported case: a URL ending in '/..' became stream '..' and wrote <out>/../detections.jsonl."""
    out = tmp_path / "out"
    planted = tmp_path / "detections.jsonl"
    planted.write_text("keep me\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens: the stream fails, its record is still written
    res = CliRunner().invoke(app, ["run", "default", "--device", "cpu", "-s", f"tcp://127.0.0.1:{port}/..",
                                   "--out", str(out), "--max-retries", "0", "--timeout", "1", "--no-dashboard"])
    assert planted.read_text() == "keep me\n", res.output
    written = [p for p in out.rglob("*") if p.is_file()]
    assert written and all(out.resolve() in p.resolve().parents for p in written)


def test_sinks_refuse_a_name_that_leaves_out(tmp_path):
    from yolotune.io.stream_sinks import StreamSinks

    for bad in ("..", "../x", "a/b", "/abs", ""):
        with pytest.raises(ValueError):
            StreamSinks(tmp_path, bad, ("jsonl",))


def test_metrics_listen_on_loopback_unless_asked(tmp_path):
    import psutil

    from yolotune.serve.metrics import PrometheusMetrics

    def bound(host):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        m = PrometheusMetrics(["a"])
        m.serve(port, host) if host else m.serve(port)
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        addrs = {c.laddr.ip for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port
                 and c.status == psutil.CONN_LISTEN}
        m.close()
        return addrs

    assert bound(None) == {"127.0.0.1"}
    assert bound("0.0.0.0") == {"0.0.0.0"}
