"""Sinks (JSONL, COCO, annotated images), video inputs, the in-memory API and NMS-free heads, on the CPU."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from yolotune import Detections, Detector, ErrorRecord
from yolotune.cli import app
from yolotune.data.samples import photo_like, write_sample_images
from yolotune.data.synth import write_video


@pytest.fixture(scope="module")
def detector():
    with Detector("yolov8n.yaml", device="cpu", batch=4, class_bias=-2.0, return_images=True) as det:
        yield det


def test_cli_writes_jsonl_coco_and_images(tmp_path):
    imgs = write_sample_images(tmp_path / "in", 3, size=(240, 320), seed=2)
    (tmp_path / "in" / "000000000139.jpg").write_bytes(imgs[0].read_bytes())  # COCO-style numeric name
    res = CliRunner().invoke(app, ["predict", "yolov8n.yaml", str(tmp_path / "in"), "--device", "cpu", "--class-bias", "-2",
                                   "--out", str(tmp_path / "out"), "-f", "jsonl", "-f", "coco", "-f", "images", "--json"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(line) for line in (tmp_path / "out" / "detections.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and all(line["ok"] for line in lines)
    first = lines[0]["detections"][0]
    assert set(first) == {"box", "score", "class_id", "class_name"} and len(first["box"]) == 4
    coco = json.loads((tmp_path / "out" / "coco_results.json").read_text())
    images = json.loads((tmp_path / "out" / "coco_images.json").read_text())
    assert {i["id"] for i in images} >= {139}
    assert len(coco) == sum(len(line["detections"]) for line in lines)
    x, y, w, h = coco[0]["bbox"]
    assert w > 0 and h > 0 and set(coco[0]) == {"image_id", "category_id", "bbox", "score"}
    drawn = sorted((tmp_path / "out" / "images").iterdir())
    assert len(drawn) == 4 and Image.open(drawn[0]).size == (320, 240)


def test_video_frames_come_back_in_order(tmp_path, detector):
    clip = write_video(tmp_path / "clip.mp4", frames=10, size=(120, 160))
    results = list(detector.predict([clip]))
    assert [r.source.frame for r in results] == list(range(10))
    assert all(isinstance(r, Detections) and r.image_size == (120, 160) for r in results)


def test_corrupt_and_truncated_videos_are_reported_and_others_continue(tmp_path, detector):
    good = write_video(tmp_path / "good.mp4", frames=6, size=(120, 160))
    data = good.read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.mp4").write_bytes(b"\x00" * 4096)
    results = list(detector.predict([tmp_path / "garbage.mp4", tmp_path / "truncated.mp4", good]))
    errors = [r for r in results if isinstance(r, ErrorRecord)]
    assert errors and errors[0].source.path.endswith("garbage.mp4") and "cannot open video" in errors[0].reason
    assert [r.source.frame for r in results if r.ok and r.source.path == str(good)] == list(range(6))


def test_detect_in_memory_frames_equals_predict_on_the_same_pixels(tmp_path, detector):
    paths = write_sample_images(tmp_path, 3, size=(200, 300), seed=9, quality=100)
    from yolotune.io.decode import decode_with_pil

    frames = [decode_with_pil(p.read_bytes()) for p in paths]
    direct = detector.detect(frames)
    via_files = list(detector.predict(paths))
    for a, b in zip(direct, via_files):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-4)
        np.testing.assert_array_equal(a.class_ids, b.class_ids)
    assert sum(len(r) for r in direct) > 0
    assert direct[0].to_dict()["detections"][0]["class_name"] == detector.names[int(direct[0].class_ids[0])]


def test_nms_free_head_on_cpu(rng):
    with Detector("yolo26n.yaml", device="cpu", batch=2, end2end=True, class_bias=0.0, max_det=100) as det:
        assert det.model.spec.layout == "end2end"
        out = det.detect([photo_like(rng, 240, 320), photo_like(rng, 240, 320)])
    assert all(0 < len(r) <= 100 for r in out)
    assert all(np.all(np.diff(r.scores) <= 0) for r in out)
    with pytest.raises(Exception, match="no NMS-free"):
        Detector("yolov8n.yaml", device="cpu", end2end=True)


def test_output_names_never_collide_and_show_where_inputs_came_from(tmp_path):
    import av

    for d in ("v1", "v2"):
        write_video(tmp_path / "in" / d / "cam.mp4", frames=4, size=(96, 128), seed=3 if d == "v1" else 5)
    photo = photo_like(np.random.default_rng(0), 96, 128)
    Image.fromarray(photo).save(tmp_path / "in" / "a.jpg")
    Image.fromarray(photo[::-1].copy()).save(tmp_path / "in" / "a.png")
    Image.fromarray(photo).save(tmp_path / "in" / "v1" / "a.jpg")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["predict", "default", str(tmp_path / "in"), str(tmp_path / "in" / "v1"),
                                   str(tmp_path / "in" / "v2"), "--device", "cpu", "--out", str(out), "-f", "jsonl",
                                   "-f", "images", "-f", "video", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    videos = sorted(p.relative_to(out / "videos").as_posix() for p in (out / "videos").rglob("*.mp4"))
    assert videos == ["v1/cam.mp4", "v2/cam.mp4"]
    assert len(summary["outputs"]) == len(set(summary["outputs"]))  # each listed once
    for v in videos:
        with av.open(str(out / "videos" / v)) as c:
            assert sum(1 for _ in c.decode(video=0)) == 4  # neither video lost its frames to the other
    images = sorted(p.relative_to(out / "images").as_posix() for p in (out / "images").rglob("*.jpg"))
    assert {"a.jpg", "a.png.jpg", "v1/a.jpg"} <= set(images)
    assert "v1/cam.mp4_000003.jpg" in images and "v2/cam.mp4_000003.jpg" in images
    assert len(images) == 3 + 8


def test_annotated_video_follows_a_change_of_resolution(tmp_path):
    import av

    from yolotune.io.sinks import AnnotatedVideoSink
    from yolotune.types import InputRef

    sink = AnnotatedVideoSink(tmp_path)
    empty = dict(boxes=np.zeros((0, 4), np.float32), scores=np.zeros(0, np.float32), class_ids=np.zeros(0, np.int64))
    for k, (h, w) in enumerate([(96, 160)] * 3 + [(192, 320)] * 2):
        image = np.zeros((h, w, 3), np.uint8)
        image[-8:, -8:] = 255  # a mark in the bottom-right corner: cropping would lose it
        sink.write(Detections(InputRef("cam.ts", k), (h, w), image=image, **empty))
    paths = sink.close()
    assert [p.split("/")[-1] for p in paths] == ["cam.ts.mp4", "cam.ts_part2.mp4"]
    for path, (h, w, n) in zip(paths, [(96, 160, 3), (192, 320, 2)]):
        with av.open(path) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        assert len(frames) == n and frames[0].shape[:2] == (h, w) and frames[-1][-4:, -4:].mean() > 200


@pytest.mark.parametrize("hw", [(3000, 4000), (720, 1280), (96, 128)])
def test_labels_and_lines_grow_with_the_image(hw):
    from yolotune.io.sinks import class_color, draw_detections
    from yolotune.types import InputRef

    h, w = hw
    box = np.array([[w * 0.3, h * 0.4, w * 0.7, h * 0.9]], np.float32)
    det = Detections(InputRef("x.jpg"), (h, w), box, np.array([0.91], np.float32), np.array([0]), {0: "person"})
    drawn = np.asarray(draw_detections(np.zeros((h, w, 3), np.uint8), det))
    painted = np.all(drawn == class_color(0), axis=2)
    label_rows = painted[: int(h * 0.4), int(w * 0.3): int(w * 0.7)].any(axis=1)  # the label sits above the box
    label_height = label_rows.sum()
    assert label_height >= max(10, min(h, w) / 60), label_height  # readable: ~2% of the short side, 10 px at least
    assert label_height <= max(16, min(h, w) / 20)
    line = painted[int(h * 0.65), int(w * 0.3) - 1: int(w * 0.3) + 40].sum()  # the box's left edge, mid-height
    assert line >= max(1, round(min(h, w) / 300))


def test_detections_convert_to_supervision_and_annotate(detector, tmp_path):
    sv = pytest.importorskip("supervision")  # in the dev extra: skipped only where it is not installed
    from yolotune.types import InputRef

    photo = write_sample_images(tmp_path / "p", 1, size=(192, 256), seed=3)[0]
    det = next(iter(detector.predict([photo])))
    converted = det.to_supervision()
    assert isinstance(converted, sv.Detections) and len(converted) == len(det)
    np.testing.assert_allclose(converted.xyxy, det.boxes)
    np.testing.assert_allclose(converted.confidence, det.scores)
    assert converted.class_id.tolist() == det.class_ids.tolist()
    assert list(converted.data["class_name"]) == det.class_names
    image = np.asarray(Image.open(photo).convert("RGB")).copy()
    annotated = sv.BoxAnnotator().annotate(image, converted)
    assert annotated.shape == image.shape
    empty = Detections(InputRef("e.jpg"), (10, 10), np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                       np.zeros(0, np.int64), {})
    assert len(empty.to_supervision()) == 0
