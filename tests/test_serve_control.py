"""Streams changed while run goes on: the watched sources file and the HTTP control endpoint, against a stand-in and
against the stream runtime itself."""

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stand_ins import SlowDetector
from yolotune.cli import app
from yolotune.data.synth import write_video
from yolotune.io.stream_specs import name_streams, parse_source
from yolotune.serve.control import ControlServer, SourcesFileWatcher
from yolotune.serve.runtime import RunOptions, StreamRuntime


class Streams:
    """A StreamControl that remembers what it was asked."""

    def __init__(self):
        self.running: dict[str, str] = {}

    def add_stream(self, spec):
        name_streams([spec], {n.lower() for n in self.running})  # as the runtime and the controller check names
        self.running[spec.name] = spec.uri
        return spec.name

    def remove_stream(self, name):
        if name not in self.running:
            raise KeyError(f"no stream {name!r} is running")
        del self.running[name]

    def stream_list(self):
        return [{"name": n, "source": u} for n, u in self.running.items()]


def parse(text, name=None):
    return parse_source(text, name=name)


def test_the_sources_file_diff_adds_and_removes_streams(tmp_path):
    streams, said = Streams(), []
    streams.running = {"door": "rtsp://a/1", "yard": "rtsp://a/2"}
    w = SourcesFileWatcher(tmp_path / "cams.txt", streams, parse, {"door=rtsp://a/1": "door", "yard=rtsp://a/2": "yard"},
                           on_message=said.append)
    w.apply(["door=rtsp://a/1", "gate=rtsp://a/3", "bad name=rtsp://a/4"])
    assert streams.running == {"door": "rtsp://a/1", "gate": "rtsp://a/3"}
    assert any("yard removed" in m for m in said) and any("cannot add 'bad name=rtsp://a/4'" in m for m in said)
    w.apply(["gate=rtsp://a/9"])  # a line changed: the old stream stops, the new one starts
    assert streams.running == {"gate": "rtsp://a/9"}


def test_the_watcher_follows_the_file_as_it_changes(tmp_path):
    listing = tmp_path / "cams.txt"
    listing.write_text("door=rtsp://a/1\n")
    streams = Streams()
    streams.running = {"door": "rtsp://a/1"}
    w = SourcesFileWatcher(listing, streams, parse, {"door=rtsp://a/1": "door"}, interval_s=0.05)
    w.start()
    try:
        listing.write_text("# cameras\ndoor=rtsp://a/1\ngate\trtsp://a/2\n")
        deadline = time.time() + 5
        while "gate" not in streams.running and time.time() < deadline:
            time.sleep(0.05)
        assert streams.running == {"door": "rtsp://a/1", "gate": "rtsp://a/2"}
    finally:
        w.stop()


def request(method, url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            text = r.read().decode()
            return r.status, json.loads(text) if text else None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode() or "null")


def test_the_control_endpoint_lists_adds_and_removes_on_loopback():
    streams = Streams()
    server = ControlServer(streams, parse, 0)
    try:
        assert server.server.server_address[0] == "127.0.0.1"  # this machine only, unless asked
        base = f"http://127.0.0.1:{server.port}/streams"
        assert request("POST", base, {"source": "rtsp://a/1", "name": "door"}) == (201, {"name": "door"})
        assert request("POST", base, {"source": "rtsp://b/2/cam"})[1] == {"name": "b-2-cam"}
        assert request("POST", base, {"source": "rtsp://x", "name": "door"})[0] == 400  # runs already
        assert request("POST", base, {"nothing": 1})[0] == 400
        assert request("GET", base) == (200, [{"name": "door", "source": "rtsp://a/1"},
                                              {"name": "b-2-cam", "source": "rtsp://b/2/cam"}])
        assert request("DELETE", base + "/door") == (204, None)
        assert request("DELETE", base + "/door")[0] == 404
        assert request("GET", f"http://127.0.0.1:{server.port}/other")[0] == 404
    finally:
        server.close()


def test_a_runtime_driven_by_the_file_and_the_endpoint(tmp_path):
    a = write_video(tmp_path / "a.mp4", frames=24, size=(48, 64), seed=1)
    b = write_video(tmp_path / "b.mp4", frames=17, size=(48, 64), seed=2)
    listing = tmp_path / "cams.txt"
    listing.write_text(f"first={a}\n")
    spec = parse_source(f"first={a}", loop=True, realtime=True, lossless=True)
    rt = StreamRuntime(SlowDetector(0.0), [spec], RunOptions(out=tmp_path / "out", max_batch=4, duration_s=4.0,
                                                              keep_running=True))
    watcher = SourcesFileWatcher(listing, rt, parse, {f"first={a}": "first"}, interval_s=0.1)
    server = ControlServer(rt, parse, 0)
    watcher.start()

    def change():
        time.sleep(0.8)
        listing.write_text(f"second={b}\n")  # first taken out, second put in
        time.sleep(0.8)
        request("POST", f"http://127.0.0.1:{server.port}/streams", {"source": str(b), "name": "third"})

    t = threading.Thread(target=change)
    t.start()
    try:
        summary = rt.run()
    finally:
        t.join()
        watcher.stop()
        server.close()
    by = {s.name: s for s in summary.streams}
    assert by["first"].state == "removed" and by["second"].processed == 17 and by["third"].processed == 17


def test_watch_needs_a_sources_file(tmp_path):
    res = CliRunner().invoke(app, ["run", "default", "--watch", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--watch watches --sources-file" in res.output
