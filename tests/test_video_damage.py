"""Damaged videos: decoding goes on past what cannot be decoded, the loss is recorded as a range, a file that ends
early says so, and frames keep the numbers their timestamps give them."""

import json

import av
import pytest
from typer.testing import CliRunner

from yolotune.cli import app
from yolotune.data.synth import write_video
from yolotune.io.video import iter_video_frames
from yolotune.types import ErrorRecord


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("v") / "clip.mp4", frames=150, size=(96, 160), seed=4)


def remux(src, dst, fmt=None, options=None):
    """The same packets in another container (MPEG-TS, or MP4 with its index first: "faststart")."""
    with av.open(str(src)) as i, av.open(str(dst), "w", format=fmt, options=options or {}) as o:
        s = o.add_stream_from_template(i.streams.video[0])
        for p in i.demux(i.streams.video[0]):
            if p.dts is None:
                continue
            p.stream = s
            o.mux(p)
    return dst


def frames_and_errors(path):
    items = list(iter_video_frames(str(path)))
    frames = [ref for ref, _ in (i for i in items if not isinstance(i, ErrorRecord))]
    return frames, [i for i in items if isinstance(i, ErrorRecord)]


@pytest.mark.slow
def test_decoding_goes_on_past_a_damaged_middle_and_records_the_gap(clip, tmp_path):
    data = bytearray(clip.read_bytes())
    n = len(data)
    data[int(n * 0.4):int(n * 0.6)] = bytes(int(n * 0.6) - int(n * 0.4))  # the middle 20% zeroed
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    frames, errors = frames_and_errors(damaged)
    assert len(frames) >= 100  # container.decode stopped at 40 here; ffmpeg decodes 120 of 150
    assert errors and all("lost" in e.reason and e.stage == "decode" for e in errors)
    lost = sum(int(e.reason.split("(")[1].split(")")[0]) for e in errors)
    assert len(frames) + lost == 150
    assert frames[-1].frame == 149 and all(f.frame == round(f.time * 30) for f in frames)
    res = CliRunner().invoke(app, ["predict", "default", str(damaged), "--device", "cpu", "--json", "--out", str(tmp_path / "o")])
    summary = json.loads(res.stdout)
    assert res.exit_code == 3 and summary["failed"] == len(errors)
    assert any("frames" in e["error"] and "lost" in e["error"] and "frame" in e for e in summary["errors"])


def test_a_file_cut_short_is_reported_truncated_and_exits_3(clip, tmp_path):
    whole = remux(clip, tmp_path / "faststart.mp4", options={"movflags": "faststart"})  # index first, as cameras write
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    frames, errors = frames_and_errors(cut)
    assert 0 < len(frames) < 150 and len(errors) == 1
    assert "truncated" in errors[0].reason and f"{len(frames)} of 150" in errors[0].reason
    res = CliRunner().invoke(app, ["predict", "default", str(cut), "--device", "cpu", "--json", "--out", str(tmp_path / "o")])
    assert res.exit_code == 3 and "truncated" in json.loads(res.stdout)["errors"][0]["error"]
    frames, errors = frames_and_errors(whole)  # the whole file: every frame, no record
    assert len(frames) == 150 and errors == []


@pytest.mark.slow
def test_frames_are_numbered_by_their_timestamps_after_a_gap_and_carry_their_time(clip, tmp_path):
    ts = remux(clip, tmp_path / "clip.ts", fmt="mpegts")
    data = ts.read_bytes()
    cut = len(data) // 2 // 188 * 188
    gap = tmp_path / "gap.ts"
    gap.write_bytes(data[:cut] + data[cut + 188 * 60:])  # 60 TS packets (about a fifth of the clip) gone
    intact, _ = frames_and_errors(ts)
    frames, errors = frames_and_errors(gap)
    assert [f.frame for f in intact] == list(range(150))
    assert len(frames) < 150 and frames[-1].frame == 149  # not the decode counter's len(frames) - 1
    assert all(f.frame == round(f.time * 30) for f in frames)
    assert errors and "lost" in errors[0].reason
    first_after = next(f for f, g in zip(frames, frames[1:]) if g.frame - f.frame > 1)
    assert errors[0].source.frame == first_after.frame + 1  # the gap starts right after the last good frame
    out = tmp_path / "o"
    CliRunner().invoke(app, ["predict", "default", str(gap), "--device", "cpu", "--out", str(out)])
    rows = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    assert all("time" in r for r in rows if r["ok"]) and rows[-1]["frame"] == 149


@pytest.mark.slow
def test_run_goes_on_past_damage_records_the_gap_and_exits_3(clip, tmp_path):
    data = bytearray(clip.read_bytes())
    n = len(data)
    data[int(n * 0.4):int(n * 0.6)] = bytes(int(n * 0.6) - int(n * 0.4))
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", "default", "-s", str(damaged), "--device", "cpu", "--out", str(out),
                                   "--no-dashboard", "--json"])
    summary = json.loads(res.stdout)
    s = summary["streams"][0]
    assert res.exit_code == 3 and summary["damaged"] == ["damaged"] and s["state"] == "finished"
    assert s["frames_lost"] > 0 and s["processed"] + s["frames_lost"] == 150
    rows = [json.loads(line) for line in (out / "damaged" / "detections.jsonl").read_text().splitlines()]
    gaps = [r for r in rows if r.get("event") == "decode-gap"]
    assert gaps and all(not r["ok"] and "lost" in r["message"] for r in gaps)
    frames = [r for r in rows if "frame" in r]
    assert frames[-1]["frame"] == 149 and all(r["frame"] == round(r["pts"] * 30) for r in frames)


def test_frames_left_undecoded_on_demand_at_the_end_are_drops_not_a_truncated_file(clip):
    """A camera-like reading past capacity holds its last packets back undecoded: those frames were dropped on
    purpose, and the file is whole (a looped real-time stream on a slow machine reported each pass truncated)."""
    from yolotune.io.video import FrameGap, VideoReader

    class NoRoomAfter:  # the consumer takes frames until packet 100, then has no room
        def __init__(self):
            self.asked = 0

        def room(self, held):
            self.asked += 1
            return 1 if self.asked <= 100 else 0

    with VideoReader(str(clip)) as reader:
        items = list(reader.frames(NoRoomAfter()))
        gaps = [i for i in items if isinstance(i, FrameGap)]
        assert gaps == [] and reader.stats.skipped > 0
        assert len([i for i in items if not isinstance(i, FrameGap)]) < 150
