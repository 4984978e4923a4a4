"""I420 frames: the device conversion against FFmpeg's own RGB, and detection on I420 vs RGB frames."""

import numpy as np
import pytest
import torch

from yolotune.data.synth import write_video
from yolotune.ops.color import i420_to_rgb, is_i420


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    import av

    clip = write_video(tmp_path_factory.mktemp("v") / "c.mp4", frames=12, size=(360, 640), seed=9)
    with av.open(str(clip)) as c:
        return [(f.to_ndarray(format="yuv420p"), f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]


def test_i420_to_rgb_matches_ffmpeg(frames):
    planes = torch.from_numpy(np.stack([p for p, _ in frames]))
    rgb = i420_to_rgb(planes).permute(0, 2, 3, 1).numpy().astype(int)
    want = np.stack([r for _, r in frames]).astype(int)
    diff = np.abs(rgb - want)
    assert rgb.shape == want.shape and diff.mean() < 1.5 and diff.max() <= 4


def test_is_i420():
    assert is_i420(np.zeros((540, 640), np.uint8)) and is_i420(torch.zeros(1080, 1920, dtype=torch.uint8))
    assert not is_i420(np.zeros((360, 640, 3), np.uint8)) and not is_i420(np.zeros((540, 640), np.float32))


def test_detect_on_i420_frames_finds_what_rgb_finds(frames):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from matching import matched_fraction

    from yolotune import Detector

    with Detector("default", device="cpu", batch=4) as det:
        got = det.detect([p for p, _ in frames] + [frames[0][1]])  # I420 and RGB mixed in one call
        want = det.detect([r for _, r in frames] + [frames[0][1]])
    assert [d.image_size for d in got] == [(360, 640)] * 13
    frac, total = matched_fraction([(d.boxes, d.scores, d.class_ids) for d in want],
                                   [(d.boxes, d.scores, d.class_ids) for d in got], iou=0.8, score_tol=0.05)
    assert total > 20 and frac >= 0.95


def test_submit_frames_keeps_two_batches_in_flight_with_detect_results(frames):
    from yolotune import Detector

    rgb = [r for _, r in frames]
    with Detector("default", device="cpu", batch=4) as det:
        want = det.detect(rgb[:8])
        a = det.submit_frames(rgb[:4], 0)
        b = det.submit_frames([p for p, _ in frames[4:8]], 1)  # I420 in the other slot
        got = det.collect(a) + det.collect(b)
        with pytest.raises(ValueError, match="batch is 4"):
            det.submit_frames(rgb[:5], 0)
    assert [len(d) for d in got[:4]] == [len(d) for d in want[:4]]
    assert sum(len(d) for d in got[4:]) == pytest.approx(sum(len(d) for d in want[4:]), abs=2)


def test_one_graph_frame_path_matches_the_per_image_path_for_rgb_and_i420(frames):
    """The path the GPU takes for same-size host frames (upload, I420 -> RGB, letterbox, model, NMS as one step;
    asynchronous through submit_frames), run here without graph capture: same detections as the per-image path."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from matching import matched_fraction

    from yolotune import Detector

    rgb, i420 = [r for _, r in frames], [p for p, _ in frames]
    rows = lambda ds: [(d.boxes, d.scores, d.class_ids) for d in ds]  # noqa: E731
    with Detector("default", device="cpu", batch=4) as det:
        want = det.detect(rgb[:7])
        want_i420 = det.detect(i420[:7])
        det.frames.one_graph = True  # what a CUDA detector does
        got = det.detect(rgb[:7])  # 4 + 3: two buckets
        got_i420 = det.detect(i420[:7])
        a = det.submit_frames(i420[:4], 0)
        b = det.submit_frames(rgb[4:7], 1)
        async_got = det.collect(a) + det.collect(b)
        assert {k[0] for k in det.frames.buffers} == {"direct", 0, 1}
        assert {k[-1] for k in det.frames.buffers} == {"rgb", "i420"}
    assert [d.image_size for d in got_i420] == [(360, 640)] * 7 and [d.image_size for d in async_got] == [(360, 640)] * 7
    for ref, new in ((want, got), (want_i420, got_i420), (want_i420[:4] + want[4:7], async_got)):
        frac, total = matched_fraction(rows(ref), rows(new), iou=0.9, score_tol=0.02)
        assert total > 10 and frac >= 0.98


def test_prepare_frames_builds_every_batch_size_for_both_slots_without_counting_work():
    """What the serve runtime does before its sources start: every bucket's buffers (and on a GPU, graphs) for the
    stream's picture size, for submit_frames' two slots; blank frames are not counted as detections done."""
    from yolotune import Detector

    with Detector("default", device="cpu", batch=4) as det:
        assert det.prepare_frames((360, 640)) == 0.0  # no one-graph path on a CPU: nothing to prepare
        det.frames.one_graph = True  # what a CUDA detector does
        stats = dict(det.stats)
        assert det.prepare_frames((360, 640), "i420") > 0
        built = {(k[0], k[1]) for k in det.frames.buffers if k[2:] == (360, 640, "i420")}
        assert built == {(slot, b) for slot in (0, 1) for b in det.buckets} and det.buckets == [1, 2, 4]
        assert det.stats == stats and "submit" not in det.timings
        blank = np.zeros((540, 640), np.uint8)  # then the run's frames go through the prepared buffers
        got = det.collect(det.submit_frames([blank] * 3, 1))
        assert len(got) == 3 and det.stats["inputs"] == stats["inputs"] + 3


def test_nv12_converts_exactly_as_the_same_pixels_in_i420(frames):
    from yolotune.ops.color import i420_to_nv12, nv12_to_rgb

    planes = torch.from_numpy(np.stack([p for p, _ in frames]))
    nv12 = i420_to_nv12(planes)
    h = planes.shape[1] * 2 // 3
    assert nv12.shape == planes.shape and torch.equal(nv12[:, :h], planes[:, :h])
    assert torch.equal(nv12[:, h:, 0::2].reshape(len(frames), -1), planes[:, h : h + h // 4].reshape(len(frames), -1))
    assert torch.equal(nv12_to_rgb(nv12), i420_to_rgb(planes))


def test_one_graph_path_takes_nvdec_frames_and_i420_beside_them(frames):
    """NVDEC's NV12 pictures (here on the CPU) in the one-graph path, alone and mixed with I420 host frames of the
    same size (streams decoded on NVDEC and on the CPU in one batch): the detections of the I420 path."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from matching import matched_fraction

    from yolotune import Detector
    from yolotune.io.nvdec import NV12Picture
    from yolotune.ops.color import i420_to_nv12

    i420 = [p for p, _ in frames]
    nv12 = [NV12Picture(i420_to_nv12(torch.from_numpy(p)[None])[0]) for p in i420]
    rows = lambda ds: [(d.boxes, d.scores, d.class_ids) for d in ds]  # noqa: E731
    with Detector("default", device="cpu", batch=4) as det:
        want = det.detect(i420[:8])
        per_image = det.detect(nv12[:3])  # not one graph: converted frame by frame
        det.frames.one_graph = True
        a = det.submit_frames(nv12[:4], 0)
        b = det.submit_frames([nv12[4], i420[5], nv12[6], i420[7]], 1)
        got = det.collect(a) + det.collect(b)
        assert {k[-1] for k in det.frames.buffers} == {"nv12"}
        assert det.prepare_frames((360, 640), "nv12") > 0
    assert [d.image_size for d in got] == [(360, 640)] * 8
    for ref, new in ((want, got), (want[:3], per_image)):
        frac, total = matched_fraction(rows(ref), rows(new), iou=0.9, score_tol=0.02)
        assert total > 10 and frac >= 0.98


def test_mixed_nv12_batches_stage_their_host_frames_in_buffers_made_once(frames):
    """I420 host frames beside NVDEC's in a batch are staged in the frame buffers' own staging (pinned on a GPU),
    made at the first mixed batch and reused: not stacked and pinned anew per batch (pinning is a driver call)."""
    from yolotune import Detector
    from yolotune.io.nvdec import NV12Picture
    from yolotune.ops.color import i420_to_nv12

    i420 = [p for p, _ in frames]
    nv12 = [NV12Picture(i420_to_nv12(torch.from_numpy(p)[None])[0]) for p in i420]
    with Detector("default", device="cpu", batch=4) as det:
        det.frames.one_graph = True
        det.collect(det.submit_frames([nv12[0], i420[1], nv12[2], i420[3]], 0))
        (fb,) = [v for k, v in det.frames.buffers.items() if k[0] == 0]
        staging = fb.i420_staging
        assert staging is not None and tuple(staging.shape) == (4, *i420[0].shape)
        det.collect(det.submit_frames([i420[4], i420[5], nv12[6], i420[7]], 0))
        assert fb.i420_staging is staging
        assert torch.equal(fb.frames[1], i420_to_nv12(torch.from_numpy(i420[5])[None])[0].view(fb.frames.shape[1:]))
