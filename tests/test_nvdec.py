"""Video decoded on NVDEC, without a GPU: which streams are routed to it, what NVDEC is told (Annex B, codecs,
formats, sizes), the fallback to the CPU, and the runtime and predict paths on NVDEC-like device frames (an emulator
that decodes with FFmpeg and hands over NV12Pictures as NVDEC does). tests/gpu/test_nvdec_gpu.py runs NVDEC itself."""

import numpy as np
import pytest
import torch

from nvdec_emulator import emulated_factory
from yolotune.data.synth import write_video
from yolotune.io.nvdec import NV12Picture, annexb_filter, stream_problem, video_decoder_for
from yolotune.io.stream_specs import SourceSpec
from yolotune.io.video import FrameGap, VideoReader, iter_video_frames
from yolotune.serve.decode_routing import DecodeRouter, nvdec_stream_limit


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("v") / "cam.mp4", frames=20, size=(144, 256), fps=10, seed=3,
                       camera=True)


def test_annexb_filter_only_for_length_prefixed_h264_and_hevc():
    assert annexb_filter("h264", b"\x01d\x00\x1e\xff") == "h264_mp4toannexb"  # avcC (MP4, MKV)
    assert annexb_filter("hevc", b"\x01\x01\x60") == "hevc_mp4toannexb"  # hvcC
    assert annexb_filter("h264", b"\x00\x00\x00\x01\x67") is None  # Annex B already (TS, RTSP, raw)
    assert annexb_filter("h264", None) is None and annexb_filter("av1", b"\x81") is None


def test_stream_problem_says_what_nvdec_cannot_take():
    assert stream_problem("h264", "yuv420p", (720, 1280), None) is None
    assert stream_problem("hevc", "yuvj420p", (1080, 1920), {"supported": 1, "max_width": 8192, "max_height": 8192}) is None
    assert "does not decode prores" in stream_problem("prores", "yuv422p10le", (720, 1280), None)
    assert "not 8-bit 4:2:0" in stream_problem("h264", "yuv422p", (720, 1280), None)
    assert "odd picture size" in stream_problem("h264", "yuv420p", (721, 1280), None)
    caps = {"supported": 1, "num_decoder_engines": 7, "max_width": 4096, "max_height": 4096, "min_width": 48,
            "min_height": 16}
    assert "outside NVDEC's" in stream_problem("h264", "yuv420p", (4320, 7680), caps)
    assert "does not decode av1" in stream_problem("av1", "yuv420p", (720, 1280), {"supported": 0})


def test_video_decode_choice_on_a_cpu_device():
    assert video_decoder_for("cpu", None) is None and video_decoder_for("auto", None) is None
    assert video_decoder_for("auto", torch.device("cpu")) is None
    with pytest.raises(ValueError, match="cannot decode video on NVDEC: NVDEC needs a CUDA device"):
        video_decoder_for("nvdec", torch.device("cpu"))
    with pytest.raises(ValueError, match="auto, nvdec or cpu"):
        video_decoder_for("gpu", None)


def test_router_takes_video_streams_up_to_its_limit_and_frees_room():
    r = DecodeRouter(factory=object(), limit=2)
    file, url = SourceSpec("a.mp4", "file", "a"), SourceSpec("rtsp://cam/1", "url", "cam")
    assert r.take(0, file) and r.take(1, url) and not r.take(2, file)  # full: the CPU decodes it
    assert not r.take(3, SourceSpec("/frames", "folder", "f")) and not r.take(4, SourceSpec("/dev/video0", "camera", "c"))
    assert r.take(1, url)  # already on it
    r.release(0)
    assert r.take(2, file) and r.on_nvdec == {1, 2}
    r.retain({2})
    assert r.on_nvdec == {2}
    assert not DecodeRouter(None).take(0, file) and not DecodeRouter(object(), limit=0).enabled
    assert nvdec_stream_limit(3000.0, 30) == 85 and nvdec_stream_limit(None, 30) is None


def test_reader_decodes_on_the_given_decoder_or_falls_back_saying_why(clip):
    with VideoReader(str(clip), decoder=emulated_factory()) as r:
        frames = [f for f in r.frames() if not isinstance(f, FrameGap)]
        assert r.decoded_on == "nvdec" and r.fallback is None
    assert [f.index for f in frames] == list(range(20)) and all(isinstance(f.picture, NV12Picture) for f in frames)
    assert frames[0].picture.shape == (216, 256) and (frames[0].picture.height, frames[0].picture.width) == (144, 256)
    with VideoReader(str(clip), decoder=emulated_factory(refuse={"h264"})) as r:
        frames = [f for f in r.frames() if not isinstance(f, FrameGap)]
        assert r.decoded_on == "cpu" and r.fallback == "refused by the test" and len(frames) == 20


def test_predict_video_frames_from_the_device_decoder_match_ffmpegs(clip):
    cpu = [x for x in iter_video_frames(str(clip))]
    dev = [x for x in iter_video_frames(str(clip), emulated_factory())]
    assert [r for r, _ in cpu] == [r for r, _ in dev]
    a = np.stack([f for _, f in cpu]).astype(int)
    b = torch.stack([f for _, f in dev]).permute(0, 2, 3, 1).numpy().astype(int)
    assert np.abs(a - b).mean() < 1.5  # FFmpeg's RGB vs the device conversion of the same pixels


def test_predict_decodes_videos_on_the_device_decoder(clip, monkeypatch, tmp_path):
    from yolotune import Detector

    with Detector("default", device="cpu", batch=4) as det:
        want = list(det.predict([str(clip)]))
        det.video_decoder = emulated_factory()
        got = list(det.predict([str(clip)]))
    assert [r.source for r in got] == [r.source for r in want] and len(got) == 20
    assert sum(len(r) for r in got) == pytest.approx(sum(len(r) for r in want), abs=3)


def _run(specs, monkeypatch, limit=None, refuse=frozenset(), one_graph=False, **opts):
    from yolotune import Detector
    from yolotune.serve import runtime as runtime_module
    from yolotune.serve.runtime import RunOptions, StreamRuntime

    monkeypatch.setattr(runtime_module, "video_decoder_for", lambda choice, device: emulated_factory(refuse))
    with Detector("default", device="cpu", batch=4) as det:
        det.frames.one_graph = one_graph
        rt = StreamRuntime(det, specs, RunOptions(out=None, max_batch=4, decoders="threads", nvdec_streams=limit,
                                                  **opts))
        return rt.run()


def test_run_routes_streams_to_nvdec_up_to_the_limit_and_the_rest_to_the_cpu(clip, monkeypatch):
    specs = [SourceSpec(str(clip), "file", f"s{i}") for i in range(3)]
    s = _run(specs, monkeypatch, limit=2, one_graph=True)
    assert [st.decoder for st in s.streams] == ["nvdec", "nvdec", "cpu"]
    assert all(st.processed == 20 and st.state == "finished" for st in s.streams), s.streams
    assert s.video_decode["nvdec_streams"] == 2 and s.video_decode["cpu_streams"] == 1
    assert s.video_decode["nvdec_limit"] == 2 and s.video_decode["nvdec_processes"] == 0 and not s.any_failed


def test_run_falls_back_to_the_cpu_for_a_stream_nvdec_refuses_and_says_so(clip, monkeypatch, tmp_path):
    import json

    from yolotune import Detector
    from yolotune.serve import runtime as runtime_module
    from yolotune.serve.runtime import RunOptions, StreamRuntime

    monkeypatch.setattr(runtime_module, "video_decoder_for", lambda c, d: emulated_factory({"h264"}))
    with Detector("default", device="cpu", batch=4) as det:
        StreamRuntime(det, [SourceSpec(str(clip), "file", "cam")], RunOptions(out=tmp_path, decoders="threads")).run()
    rows = [json.loads(line) for line in (tmp_path / "cam" / "detections.jsonl").read_text().splitlines()]
    events = [r for r in rows if r.get("event") == "decoder"]
    assert len(events) == 1 and "decoded on the CPU: refused by the test" in events[0]["message"]
    assert sum(1 for r in rows if "frame" in r and "event" not in r) == 20


@pytest.mark.parametrize("fail_after", [0, 7, 10, 19])
def test_reader_goes_on_on_the_cpu_when_nvdec_breaks_mid_stream(clip, fail_after):
    """Every frame once, in order, no gap: the packets since the last keyframe are decoded again on the CPU and the
    frames NVDEC gave already are not given twice."""
    with VideoReader(str(clip), decoder=emulated_factory(fail_after=fail_after)) as r:
        items = list(r.frames())
        assert r.decoded_on == "cpu" and "NVDEC failed mid-stream" in r.fallback and "illegal memory" in r.fallback
    assert not [f for f in items if isinstance(f, FrameGap)]
    assert [f.index for f in items] == list(range(20))
    assert [isinstance(f.picture, NV12Picture) for f in items] == [True] * fail_after + [False] * (20 - fail_after)
    ffmpeg = [f for f in VideoReader(str(clip)).frames()]
    for a, b in zip(items[fail_after:], ffmpeg[fail_after:]):
        assert np.array_equal(a.picture.to_ndarray(format="rgb24"), b.picture.to_ndarray(format="rgb24"))


def test_predict_video_goes_on_on_the_cpu_when_nvdec_breaks(clip):
    got = list(iter_video_frames(str(clip), emulated_factory(fail_after=5)))
    assert [ref.frame for ref, _ in got] == list(range(20))


def test_run_stream_goes_on_on_the_cpu_when_nvdec_breaks_and_says_so(clip, monkeypatch, tmp_path):
    import json

    from yolotune import Detector
    from yolotune.serve import runtime as runtime_module
    from yolotune.serve.runtime import RunOptions, StreamRuntime

    monkeypatch.setattr(runtime_module, "video_decoder_for", lambda c, d: emulated_factory(fail_after=12))
    with Detector("default", device="cpu", batch=4) as det:
        s = StreamRuntime(det, [SourceSpec(str(clip), "file", "cam")], RunOptions(out=tmp_path, decoders="threads")).run()
    st = s.streams[0]
    assert st.state == "finished" and st.processed == 20 and st.decoder == "cpu" and not s.any_failed, st
    rows = [json.loads(line) for line in (tmp_path / "cam" / "detections.jsonl").read_text().splitlines()]
    events = [r for r in rows if r.get("event") == "decoder"]
    assert len(events) == 1 and "NVDEC failed mid-stream" in events[0]["message"], events
    assert [r["frame"] for r in rows if "frame" in r and "event" not in r] == list(range(20))


def test_reader_past_a_long_group_of_pictures_starts_the_cpu_at_the_next_keyframe(clip, monkeypatch):
    from yolotune.io import video

    monkeypatch.setattr(video, "MAX_REPLAY", 3)  # the 7 packets since the keyframe are more than it keeps
    with VideoReader(str(clip), decoder=emulated_factory(fail_after=7)) as r:
        items = list(r.frames())
    gaps = [f for f in items if isinstance(f, FrameGap)]
    assert [(g.first, g.last) for g in gaps] == [(7, 9)] and "NVDEC failed mid-stream" in gaps[0].reason
    frames = [f for f in items if not isinstance(f, FrameGap)]
    assert [f.index for f in frames] == [*range(7), *range(10, 20)]
    assert all(isinstance(f.picture, NV12Picture) == (f.index < 7) for f in frames)
