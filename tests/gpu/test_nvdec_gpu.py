"""Video decoded on the GPU's NVDEC engines (marked `gpu`; needs PyNvVideoCodec, the nvdec extra): frames against
FFmpeg's, predict and run on NVDEC against the CPU path, routing with overflow to the CPU, the capacity probe."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from yolotune import Detector
from yolotune.data.synth import write_video
from yolotune.io.stream_specs import SourceSpec
from yolotune.io.video import FrameGap, VideoReader

pytestmark = pytest.mark.gpu
nvdec = pytest.importorskip("yolotune.io.nvdec")
if not nvdec.available():
    pytest.skip("PyNvVideoCodec is not installed (the nvdec extra)", allow_module_level=True)
sys.path.insert(0, str(Path(__file__).parents[1]))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("v") / "cam.mp4", frames=60, size=(720, 1280), fps=30, seed=5,
                       camera=True)


def test_nvdec_frames_match_ffmpegs(clip):
    import av

    from yolotune.ops.color import i420_to_rgb, nv12_to_rgb

    assert nvdec.engines(0) > 0
    with VideoReader(str(clip), decoder=nvdec.nvdec_factory(torch.device("cuda"))) as r:
        frames = [f for f in r.frames() if not isinstance(f, FrameGap)]
        assert r.decoded_on == "nvdec", r.fallback
    with av.open(str(clip)) as c:
        want = [f.to_ndarray(format="yuv420p") for f in c.decode(video=0)]
    assert [f.index for f in frames] == list(range(60))
    pic = frames[0].picture
    assert pic.planes.is_cuda and pic.shape == (1080, 1280)
    got = torch.stack([nv12_to_rgb(f.picture.planes[None])[0] for f in frames]).int()
    ref = i420_to_rgb(torch.from_numpy(np.stack(want)).cuda()).int()
    diff = (got - ref).abs().float()
    sample = diff.flatten()[::64]  # quantile() takes at most 16M values
    assert diff.mean() < 1.0 and sample.quantile(0.999) <= 8, (diff.mean(), diff.max())


def test_predict_on_nvdec_matches_the_cpu_decoder(clip):
    from matching import matched_fraction

    with Detector("default", device="cuda", batch=16, video_decode="cpu") as det:
        want = list(det.predict([str(clip)]))
    with Detector("default", device="cuda", batch=16, video_decode="nvdec") as det:
        got = list(det.predict([str(clip)]))
    assert [r.source for r in got] == [r.source for r in want]
    rows = lambda rs: [(r.boxes, r.scores, r.class_ids) for r in rs]  # noqa: E731
    frac, total = matched_fraction(rows(want), rows(got), iou=0.85, score_tol=0.05)
    assert total > 50 and frac >= 0.95


def test_run_on_nvdec_with_overflow_to_the_cpu_processes_every_frame_once(clip, tmp_path):
    from matching import matched_fraction, stream_rows
    from yolotune.serve.runtime import RunOptions, StreamRuntime

    specs = [SourceSpec(str(clip), "file", f"cam{i}") for i in range(5)]
    with Detector("default", device="cuda", batch=8) as det:
        s = StreamRuntime(det, specs, RunOptions(out=tmp_path / "out", max_batch=8, queue_size=4, nvdec_streams=3,
                                                 decoders="processes", decoder_processes=2)).run()
        direct = det.detect([f for f in _i420(clip)])
    assert s.failed == [] and not s.any_failed and s.frames == 300
    assert sorted(st.decoder for st in s.streams) == ["cpu", "cpu", "nvdec", "nvdec", "nvdec"]
    want = [(d.boxes, d.scores, d.class_ids) for d in direct]
    for i in range(5):
        frames, got = stream_rows(tmp_path / "out" / f"cam{i}" / "detections.jsonl")
        assert frames == list(range(60))
        frac, total = matched_fraction(want, got, iou=0.85, score_tol=0.05)
        assert total > 50 and frac >= 0.95, (i, frac, total)


def test_nvdec_capacity_is_measured(clip):
    from yolotune.serve.nvdec_capacity import measure_nvdec

    cap = measure_nvdec(str(clip), "cuda", sessions=4, seconds=1.0)
    assert cap.errors == [] and cap.frames_per_s > 100 and cap.engines > 0 and cap.codec == "h264"
    assert cap.size == (720, 1280) and cap.device_bytes_per_session and cap.device_bytes_per_session > 0


def _i420(clip):
    import av

    with av.open(str(clip)) as c:
        return [f.to_ndarray(format="yuv420p") for f in c.decode(video=0)]


def test_plan_counts_nvdec_beside_the_cpu_decoders():
    from yolotune.serve.plan import plan

    with Detector("default", device="cuda", batch=32) as det:
        r = plan(det, 30, (1280, 720), verify=False).to_dict()
    nv = r["nvdec"]
    assert nv["frames_per_s"] > 300 and nv["engines"] > 0 and nv["errors"] == []
    assert nv["streams"] == int(0.85 * nv["frames_per_s"] / 30) and nv["device_bytes_per_stream"] > 0
    assert r["limits"]["decode"] >= nv["frames_per_s"] / 30


def test_profile_of_a_video_probes_both_decoders(clip):
    from yolotune.profile.run import profile

    r = profile("default", [str(clip)], device="cuda", images=64, repeats=1, sweep=False, kernels=False,
                video_decode="nvdec").to_dict()
    assert r["inputs"]["video_decode"] == "nvdec" and r["e2e"]["images"] % 60 == 0
    assert r["probes"]["video_decode_cpu_ms_per_frame"] > 0 and r["probes"]["video_decode_nvdec_ms_per_frame"] > 0
    assert {s["stage"] for s in r["stages"]} >= {"decode", "h2d", "preprocess", "nms"}


def test_a_session_that_breaks_on_the_device_hands_the_stream_to_the_cpu(clip, monkeypatch):
    """A device-side failure in NVDEC's path (here the copy out of its surface) is the session's, not the packet's:
    the reader goes on with FFmpeg and gives every frame once."""
    real, calls = torch.empty_like, [0]

    def failing_after_20(*args, **kwargs):
        calls[0] += 1
        if calls[0] > 20:
            raise RuntimeError("CUDA error: an illegal memory access was encountered (test)")
        return real(*args, **kwargs)

    with VideoReader(str(clip), decoder=nvdec.nvdec_factory(torch.device("cuda"))) as r:
        monkeypatch.setattr(torch, "empty_like", failing_after_20)
        items = list(r.frames())
        monkeypatch.undo()
        assert r.decoded_on == "cpu" and r.nvdec_broke and "illegal memory access" in r.fallback
    assert [f.index for f in items if not isinstance(f, FrameGap)] == list(range(60))
    assert sum(isinstance(f.picture, nvdec.NV12Picture) for f in items) == 20
