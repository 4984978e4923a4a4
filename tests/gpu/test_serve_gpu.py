"""yolotune run / plan on the GPU (marked `gpu`): cross-stream batches through the CUDA-graph frame path."""

import sys
from pathlib import Path

import numpy as np
import pytest

from yolotune import Detector
from yolotune.data.synth import write_video
from yolotune.serve.plan import plan
from yolotune.serve.runtime import RunOptions, StreamRuntime
from yolotune.io.stream_specs import parse_source

pytestmark = pytest.mark.gpu


def test_streams_on_the_gpu_match_direct_detection(tmp_path):
    import av

    clip = write_video(tmp_path / "c.mp4", frames=30, size=(720, 1280), seed=5)
    specs = [parse_source(str(clip), name=f"cam{i}") for i in range(6)]
    with Detector("default", device="cuda", batch=8) as det:
        summary = StreamRuntime(det, specs, RunOptions(out=tmp_path / "out", max_batch=8, queue_size=4)).run().to_dict()
        with av.open(str(clip)) as c:  # the same pixels the runtime moved (I420 by default on a GPU)
            frames = [f.to_ndarray(format=summary["pixel_format"]) for f in c.decode(video=0)]
        direct = det.detect(frames)
    assert summary["failed"] == [] and summary["frames"] == 180 and summary["mean_batch"] > 2
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from matching import matched_fraction, stream_rows

    want = [(d.boxes, d.scores, d.class_ids) for d in direct]
    for i in range(6):
        frames, got = stream_rows(tmp_path / "out" / f"cam{i}" / "detections.jsonl")
        assert frames == list(range(30))
        frac, total = matched_fraction(want, got)  # batches mix streams differently: FP16 sums may differ a little
        assert total > 30 and frac >= 0.99


def test_plan_on_the_gpu_counts_device_memory_and_verifies():
    with Detector("default", device="cuda", batch=16) as det:
        r = plan(det, 30, (640, 360), verify=True, verify_seconds=3, max_streams=16, latency_budget_ms=200).to_dict()
    assert "device_memory" in r["limits"] and r["device_bytes_per_stream"] > 0
    assert r["predicted_streams"] == 16 and r["verification"][0]["frames"] > 0
    assert r["verified_streams"] >= 1


def test_i420_frames_run_as_one_graph_sync_and_async(tmp_path):
    """The serving path: same-size I420 frames are uploaded and converted, letterboxed, detected and NMSed in one
    captured graph per slot, and find what the RGB frames find."""
    import av

    clip = write_video(tmp_path / "c.mp4", frames=16, size=(720, 1280), seed=6)
    with av.open(str(clip)) as c:
        pairs = [(f.to_ndarray(format="yuv420p"), f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    i420, rgb = [p for p, _ in pairs], [r for _, r in pairs]
    with Detector("default", device="cuda", batch=8) as det:
        want = det.detect(rgb)
        got = det.detect(i420)
        a, b = det.submit_frames(i420[:8], 0), det.submit_frames(i420[8:], 1)
        async_got = det.collect(a) + det.collect(b)
        graphs = {k: fb.graph is not None for k, fb in det.frames.buffers.items()}
    assert all(graphs.values()) and {k[0] for k in graphs} == {"direct", 0, 1}
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from matching import matched_fraction

    rows = lambda ds: [(d.boxes, d.scores, d.class_ids) for d in ds]  # noqa: E731
    for new in (got, async_got):
        frac, total = matched_fraction(rows(want), rows(new), iou=0.8, score_tol=0.05)
        assert total > 15 and frac >= 0.95


def test_frames_in_a_registered_shared_memory_ring_upload_in_place(tmp_path):
    """Decoder processes' rings are page-locked in the runtime (cudaHostRegister): frames DMA straight from them,
    sync and async, with the same detections as frames in ordinary memory."""
    import av
    from multiprocessing import shared_memory

    from yolotune.pipeline.buffers import host_tensor, is_page_locked, register_host_memory

    clip = write_video(tmp_path / "c.mp4", frames=16, size=(720, 1280), seed=7)
    with av.open(str(clip)) as c:
        i420 = [f.to_ndarray(format="yuv420p") for f in c.decode(video=0)]
    shm = shared_memory.SharedMemory(create=True, size=16 * i420[0].nbytes)
    ring = views = None
    try:
        ring = np.ndarray((16, *i420[0].shape), np.uint8, buffer=shm.buf)
        ring[:] = np.stack(i420)
        views = [ring[i] for i in range(16)]
        with Detector("default", device="cuda", batch=8) as det:
            assert not is_page_locked(i420[0]) and not is_page_locked(host_tensor(i420[0]))
            unpin = register_host_memory(shm.buf, det.device)
            assert unpin is not None and is_page_locked(views[3])
            assert host_tensor(views[3]).is_pinned()  # the lookup agrees with the driver
            want = det.detect(i420)
            got = det.detect(views)
            a, b = det.submit_frames(views[:8], 0), det.submit_frames(views[8:], 1)
            async_got = det.collect(a) + det.collect(b)
            unpin()
            assert not is_page_locked(views[3])
        for w, g in zip(want, got):  # the same pixels through the same graph
            np.testing.assert_array_equal(g.boxes, w.boxes)
            np.testing.assert_array_equal(g.class_ids, w.class_ids)
        sys.path.insert(0, str(Path(__file__).parents[1]))
        from matching import matched_fraction

        rows = lambda ds: [(d.boxes, d.scores, d.class_ids) for d in ds]  # noqa: E731
        frac, total = matched_fraction(rows(want), rows(async_got), iou=0.8, score_tol=0.05)  # the slots' own graphs
        assert total > 15 and frac >= 0.95
    finally:
        del ring, views
        shm.close()
        shm.unlink()
