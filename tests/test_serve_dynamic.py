"""Streams added and removed while a run goes on, and streams resumed at a frame (a stream moved to another runtime
goes on after its last result): in decoder threads and in decoder processes."""

import json
import threading
import time
from pathlib import Path

import pytest

from stand_ins import SlowDetector
from yolotune.data.synth import write_video
from yolotune.io.stream_specs import SourceSpec, parse_source
from yolotune.serve.runtime import RunOptions, StreamRuntime

DECODERS = pytest.mark.parametrize("decoders", ["threads", "processes"])


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("dyn")
    return {"a": write_video(d / "a.mp4", frames=24, size=(48, 64), seed=1),
            "b": write_video(d / "b.mp4", frames=17, size=(48, 64), seed=2)}


def frames_of(out: Path, name: str) -> list[int]:
    rows = [json.loads(line) for line in (out / name / "detections.jsonl").read_text().splitlines()]
    return [r["frame"] for r in rows if "frame" in r]


def events_of(out: Path, name: str) -> list[str]:
    rows = [json.loads(line) for line in (out / name / "detections.jsonl").read_text().splitlines()]
    return [r["event"] for r in rows if "event" in r]


def at(seconds: float, fn, *args) -> threading.Timer:
    t = threading.Timer(seconds, fn, args=args)
    t.start()
    return t


@DECODERS
def test_streams_added_and_removed_while_running(clips, tmp_path, decoders):
    looped = SourceSpec(str(clips["a"]), "file", "looped", loop=True, realtime=True, lossless=True)
    rt = StreamRuntime(SlowDetector(0.0), [looped], RunOptions(out=tmp_path, max_batch=4, duration_s=3.0,
                                                                 decoders=decoders, keep_running=True))
    at_removal = []

    def change():
        deadline = time.time() + 20
        while rt.stream_list()[0]["processed"] < 10 and time.time() < deadline:
            time.sleep(0.02)
        rt.add_stream(parse_source(str(clips["b"])))
        at_removal.append(rt.stream_list()[0]["processed"])
        rt.remove_stream("looped")

    at(0.0, change)
    summary = rt.run()
    by = {s.name: s for s in summary.streams}
    assert set(by) == {"looped", "b"}
    assert by["b"].state == "finished" and frames_of(tmp_path, "b") == list(range(17))  # every frame of the newcomer
    assert by["looped"].state == "removed" and "removed" in events_of(tmp_path, "looped")
    looped_frames = frames_of(tmp_path, "looped")
    # its frames stop where it was removed (but those decoded already), in order, none twice
    assert at_removal[0] >= 10 and at_removal[0] <= len(looped_frames) <= at_removal[0] + 36  # a ring of 32 slots
    assert looped_frames == list(range(len(looped_frames)))
    assert summary.stopped_by == "duration" and summary.seconds >= 2.9  # keep_running: not over when streams end
    assert not summary.any_failed


@DECODERS
def test_a_removed_stream_comes_back_under_its_name(clips, tmp_path, decoders):
    spec = lambda: SourceSpec(str(clips["a"]), "file", "door", loop=True, realtime=True, lossless=True)  # noqa: E731
    rt = StreamRuntime(SlowDetector(0.0), [spec()], RunOptions(out=tmp_path, max_batch=4, duration_s=30.0,
                                                                decoders=decoders, keep_running=True))

    def processed() -> int:
        return rt.stream_list()[0]["processed"]

    def wait_for(condition) -> None:
        deadline = time.time() + 20
        while not condition() and time.time() < deadline:
            time.sleep(0.05)

    def remove_and_add_back():
        wait_for(lambda: processed() >= 5)
        rt.remove_stream("door")
        while True:
            try:
                rt.add_stream(spec())
                break
            except ValueError:  # still stopping: its queue drains first
                time.sleep(0.05)
        wait_for(lambda: processed() >= 12)  # its counts start again
        rt._request_stop("duration")

    at(0.0, remove_and_add_back)
    summary = rt.run()
    assert [s.name for s in summary.streams] == ["door"] and summary.streams[0].state == "stopped"
    assert events_of(tmp_path, "door").count("removed") == 1
    frames = frames_of(tmp_path, "door")
    restart = next(k for k in range(1, len(frames)) if frames[k] <= frames[k - 1])  # numbering from 0 again
    assert frames[:restart] == list(range(restart)) and frames[restart] == 0 and len(frames) >= restart + 12


def test_a_running_name_is_refused_and_an_unknown_one_cannot_be_removed(clips):
    rt = StreamRuntime(SlowDetector(0.0), [parse_source(str(clips["a"]))], RunOptions(out=None, keep_running=True))
    with pytest.raises(ValueError, match="running already"):
        rt.add_stream(SourceSpec(str(clips["b"]), "file", "a"))
    with pytest.raises(KeyError):
        rt.remove_stream("nope")
    assert rt.add_stream(parse_source(str(clips["a"]))) == "a-2"  # a default name made unique


def test_a_runtime_with_no_stream_waits_for_one(clips, tmp_path):
    rt = StreamRuntime(SlowDetector(0.0), [], RunOptions(out=tmp_path, max_batch=4, duration_s=1.5, keep_running=True))
    at(0.5, rt.add_stream, SourceSpec(str(clips["b"]), "file", "late"))
    summary = rt.run()
    assert frames_of(tmp_path, "late") == list(range(17)) and summary.frames == 17
    with pytest.raises(ValueError, match="no sources"):
        StreamRuntime(SlowDetector(0.0), [], RunOptions(out=None))


@DECODERS
def test_a_file_resumed_at_a_frame_goes_on_from_it(clips, tmp_path, decoders):
    specs = [SourceSpec(str(clips["a"]), "file", "mid", start_frame=10),
             SourceSpec(str(clips["a"]), "file", "looped", loop=True, start_frame=30),  # the second pass's 7th frame
             SourceSpec(str(clips["a"]), "file", "past", start_frame=24)]  # its last result was its last frame
    summary = StreamRuntime(SlowDetector(0.0), specs, RunOptions(out=tmp_path, max_batch=4, duration_s=3.0,
                                                                  decoders=decoders)).run()
    by = {s.name: s for s in summary.streams}
    assert frames_of(tmp_path, "mid") == list(range(10, 24)) and by["mid"].state == "finished"
    looped = frames_of(tmp_path, "looped")
    assert looped[:20] == list(range(30, 50))  # on through the end of the pass and into the next
    assert by["past"].state == "finished" and frames_of(tmp_path, "past") == [] and not by["past"].error


def test_a_live_stream_resumed_numbers_its_frames_on(clips, tmp_path):
    live = SourceSpec(str(clips["b"]), "url", "cam", start_frame=500)  # a file read as a live source
    StreamRuntime(SlowDetector(0.0), [live], RunOptions(out=tmp_path, max_batch=4, duration_s=1.0,
                                                         decoders="threads")).run()
    frames = frames_of(tmp_path, "cam")
    assert frames and frames[0] >= 500 and frames == sorted(frames)


def test_a_stream_that_ended_gives_its_decoder_ring_back_while_the_run_goes_on(clips, tmp_path):
    """A long-running service sees streams come and go: the shared-memory ring of one that ended (removed, or its
    file done) is unmapped here and unlinked by its decoder process once its frames are processed, not at the end
    of the run (120 removed 720p streams held 5 GB of rings that were no longer used)."""
    import os

    a = SourceSpec(str(clips["b"]), "file", "short", realtime=True, lossless=True)
    looped = SourceSpec(str(clips["a"]), "file", "looped", loop=True, realtime=True, lossless=True)
    rt = StreamRuntime(SlowDetector(0.0), [a, looped], RunOptions(out=tmp_path, max_batch=4, duration_s=30.0,
                                                                   decoders="processes", keep_running=True))
    seen = {}

    def rings_of(i: int) -> set[str]:
        return {name for name, stream in rt.pool.ring_streams().items() if stream == i}

    def watch():
        deadline = time.time() + 20
        seen["short"] = set()
        while time.time() < deadline and rt.stream_list()[0]["state"] != "finished":
            seen["short"] |= rings_of(0)
            time.sleep(0.02)
        while time.time() < deadline and rings_of(0):  # its frames processed: given back
            time.sleep(0.05)
        seen["short_after"] = rings_of(0)
        seen["looped"] = rings_of(1)
        time.sleep(0.5)  # the decoder process unlinks it on its side
        seen["still_linked"] = [n for n in seen["short"] if os.path.exists(f"/dev/shm/{n.lstrip('/')}")]
        rt._request_stop("duration")

    at(0.0, watch)
    summary = rt.run()
    assert summary.streams[0].processed == 17 and seen["short"]  # it had a ring
    assert seen["short_after"] == set() and seen["still_linked"] == []  # given back before the run ended
    assert seen["looped"]  # the stream still running keeps its own


def test_the_decoder_pool_takes_streams_whose_numbers_it_did_not_see_before(clips, tmp_path):
    """Streams decoded elsewhere (on NVDEC in this process) take numbers too: the pool's streams need not start at 0
    nor follow each other, and each is decoded and delivered under its own number."""
    from yolotune.serve.decoders import DecoderOptions, DecoderPool
    from yolotune.serve.queues import Backlog, FrameQueue

    backlog, stop = Backlog(), threading.Event()
    queues = [FrameQueue(32, "block", backlog) for _ in range(4)]
    pool = DecoderPool([], queues, stop, DecoderOptions(5, 5, 0, 0.1, 1, "rgb24", 8), lambda *a: None, processes=1)
    sources = {i: pool.add(i, SourceSpec(str(clips["b"]), "file", f"s{i}")) for i in (3, 1)}
    assert {i: s.index for i, s in sources.items()} == {3: 3, 1: 1}
    pool.start()
    got = {i: [] for i in (1, 3)}
    deadline = time.time() + 30
    while time.time() < deadline and not all(queues[i].done for i in (1, 3)):
        for i in (1, 3):
            with backlog.lock:
                f = queues[i].pop() if len(queues[i]) else None
            if f is not None:
                got[i].append(f.index)
                pool.release([f])
        time.sleep(0.01)
    stop.set()
    pool.join(5)
    assert got == {1: list(range(17)), 3: list(range(17))}
