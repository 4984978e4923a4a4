"""Generated detection data: deterministic, labels on the visible objects, YOLO and COCO agree, clip ground truth."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from yolotune.cli import app
from yolotune.data.shapes import CLASS_NAMES, draw_object
from yolotune.data.synth import render_scene, write_video


def test_deterministic_per_seed_and_index():
    a_img, a_boxes = render_scene(3, 17)
    b_img, b_boxes = render_scene(3, 17)
    assert np.array_equal(a_img, b_img) and a_boxes == b_boxes
    c_img, _ = render_scene(4, 17)
    assert c_img.shape != a_img.shape or not np.array_equal(c_img, a_img)


@pytest.mark.slow
def test_boxes_inside_images_and_classes_valid():
    n_boxes, empty, sizes = 0, 0, []
    for i in range(40):
        img, boxes = render_scene(0, i)
        h, w = img.shape[:2]
        empty += not boxes
        for b in boxes:
            assert 0 <= b.x1 < b.x2 <= w and 0 <= b.y1 < b.y2 <= h
            assert 0 <= b.class_id < len(CLASS_NAMES)
            sizes.append(max(b.x2 - b.x1, b.y2 - b.y1))
        n_boxes += len(boxes)
    assert n_boxes > 100 and min(sizes) < 30 and max(sizes) > 200  # small and large objects
    assert {b.class_id for i in range(40) for b in render_scene(0, i)[1]} == set(range(len(CLASS_NAMES)))


def test_every_class_draws_a_visible_object(rng):
    for class_id in range(len(CLASS_NAMES)):
        patch = np.asarray(draw_object(class_id, 60, rng))
        assert patch.shape[2] == 4 and (patch[..., 3] > 127).sum() > 300, CLASS_NAMES[class_id]


def test_cli_writes_yolo_and_coco_labels_that_agree(tmp_path):
    res = CliRunner().invoke(app, ["data", "synth", "--out", str(tmp_path / "d"), "--n", "12", "--seed", "5", "--workers", "2"])
    assert res.exit_code == 0, res.output
    coco = json.loads((tmp_path / "d" / "annotations.json").read_text())
    assert [c["name"] for c in coco["categories"]] == list(CLASS_NAMES) and len(coco["images"]) == 12
    for image in coco["images"]:
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        lines = (tmp_path / "d" / "labels" / image["file_name"].replace(".jpg", ".txt")).read_text().splitlines()
        assert len(lines) == len(anns)
        for line, ann in zip(lines, anns):
            c, cx, cy, bw, bh = line.split()
            x, y, w, h = ann["bbox"]
            assert int(c) == ann["category_id"]
            assert abs(float(cx) * image["width"] - (x + w / 2)) < 0.01 and abs(float(bw) * image["width"] - w) < 0.01
    assert "names:" in (tmp_path / "d" / "dataset.yaml").read_text()


def test_video_ground_truth_per_frame(tmp_path):
    import av

    path = write_video(tmp_path / "clip.mp4", frames=12, size=(120, 160), seed=1, objects=3)
    truth = json.loads(path.with_suffix(".json").read_text())
    with av.open(str(path)) as c:
        decoded = sum(1 for _ in c.decode(video=0))
    assert decoded == len(truth["frames"]) == 12
    assert any(f["boxes"] for f in truth["frames"])


def test_cli_size_gives_every_image_that_size(tmp_path):
    res = CliRunner().invoke(app, ["data", "synth", "--out", str(tmp_path / "d"), "--n", "3", "--size", "320x180",
                                   "--workers", "1"])
    assert res.exit_code == 0, res.output
    coco = json.loads((tmp_path / "d" / "annotations.json").read_text())
    assert {(im["width"], im["height"]) for im in coco["images"]} == {(320, 180)}
    res = CliRunner().invoke(app, ["data", "synth", "--out", str(tmp_path / "e"), "--n", "1", "--size", "720p"])
    assert res.exit_code == 2 and "--size must look like 1280x720" in res.output


def test_a_camera_clip_is_encoded_like_a_cameras_stream(tmp_path):
    """Sensor noise, a keyframe a second, no B-frames and a camera's bitrate (3 Mbit/s at 720p30, here scaled to
    its size): decoding it costs what a camera's stream does, which a plain generated clip does not."""
    import av

    res = CliRunner().invoke(app, ["data", "synth", "--out", str(tmp_path / "d"), "--n", "1", "--size", "640x360",
                                   "--video-frames", "60", "--camera", "--workers", "1"])
    assert res.exit_code == 0, res.output
    camera = tmp_path / "d" / "video.mp4"
    plain = write_video(tmp_path / "plain.mp4", frames=60, size=(360, 640), seed=0)
    with av.open(str(camera)) as c:
        s = c.streams.video[0]
        assert (s.codec_context.name, s.width, s.height) == ("h264", 640, 360)
        packets = [p for p in c.demux(s) if p.size]
        keyframes = [k for k, p in enumerate(packets) if p.is_keyframe]
        pts = [p.pts for p in packets]
    assert keyframes == [0, 30] and pts == sorted(pts)  # a keyframe a second; decode order is display order
    bits_per_s = 8 * camera.stat().st_size / 2.0
    assert 0.5e6 <= bits_per_s <= 1.2e6  # 3 Mbit/s x (640x360 / 1280x720) = 0.75 Mbit/s, capped
    assert camera.stat().st_size > 2 * plain.stat().st_size  # the noise a sensor adds does not compress away
    truth = json.loads((tmp_path / "d" / "video.json").read_text())
    assert len(truth["frames"]) == 60 and any(f["boxes"] for f in truth["frames"])


def test_dataset_generation_does_not_hang_beside_a_threaded_runtime(tmp_path):
    """Generating scenes in worker processes after OpenVINO has started its thread pool (optimize measures an
    OpenVINO candidate before it generates calibration images): forked workers inherited its locked mutexes and
    hung for good; workers that start afresh do not."""
    import subprocess
    import sys

    pytest.importorskip("openvino")
    script = f"""
import numpy as np, openvino as ov
from yolotune.models import load_model
from yolotune.models.export import export_onnx
from yolotune.data.synth import write_dataset
m = export_onnx(load_model("default"), r"{tmp_path}/m.onnx", imgsz=(64, 64), dynamic_batch=False)
c = ov.Core().compile_model(str(m), "CPU")
c.create_infer_request().infer({{0: np.zeros((1, 3, 64, 64), np.float32)}})
write_dataset(r"{tmp_path}/d", 4, seed=5, workers=2)
print("done")
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert res.returncode == 0 and "done" in res.stdout, res.stderr[-2000:]


def test_dataset_workers_start_afresh_not_forked(tmp_path, monkeypatch):
    """The generator's worker processes do not fork the calling process: optimize calls it after its engines
    (PyTorch's OpenMP, ONNX Runtime's and OpenVINO's thread pools) are up, and a child forked while one of their
    threads holds a lock waits on it for good (an optimize run hung so, its two workers asleep)."""
    from concurrent.futures import ProcessPoolExecutor

    from yolotune.data import synth

    contexts = []

    class Recording(ProcessPoolExecutor):
        def __init__(self, *a, mp_context=None, **k):
            contexts.append(mp_context.get_start_method() if mp_context else "fork (the platform default)")
            super().__init__(*a, mp_context=mp_context, **k)

    monkeypatch.setattr(synth, "ProcessPoolExecutor", Recording)
    synth.write_dataset(tmp_path / "d", 3, seed=1, workers=2)
    assert contexts and contexts[0] in ("forkserver", "spawn")
    assert len(list((tmp_path / "d" / "images").iterdir())) == 3
