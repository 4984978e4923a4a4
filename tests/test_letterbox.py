"""Letterbox geometry and pixels match Ultralytics' LetterBox; boxes map back like Ultralytics' scale_boxes."""

import numpy as np
import pytest
import torch

from yolotune.ops.boxes import boxes_to_original, xywh_to_xyxy
from yolotune.ops.letterbox import canvas_shape, geometry_tensor, letterbox_batch, letterbox_geometry

augment = pytest.importorskip("ultralytics.data.augment")
ops = pytest.importorskip("ultralytics.utils.ops")

SIZES = [(720, 1280), (1080, 1920), (480, 640), (640, 480), (1, 1), (1, 3000), (3000, 7), (333, 517), (6000, 8000), (640, 640), (100, 90), (37, 1001)]


def ours(img: np.ndarray, imgsz, rect: bool, backend: str = "torch"):
    h, w = img.shape[:2]
    canvas = canvas_shape([(h, w)], imgsz, 32, rect)
    out = torch.empty(1, 3, *canvas)
    (g,) = letterbox_batch([torch.from_numpy(img).permute(2, 0, 1)], out, backend=backend)
    return (out[0].permute(1, 2, 0).numpy() * 255).round().astype(np.int16), g


@pytest.mark.parametrize("hw", SIZES)
@pytest.mark.parametrize("rect", [False, True])
def test_matches_ultralytics_letterbox(hw, rect, rng):
    img = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    if hw[0] * hw[1] > 4e6:
        img = np.ascontiguousarray(np.broadcast_to(rng.integers(0, 256, (1, hw[1], 3), dtype=np.uint8), (*hw, 3)))
    ref = augment.LetterBox((640, 640), auto=rect, stride=32)(image=img).astype(np.int16)
    got, g = ours(img, (640, 640), rect)
    assert got.shape == ref.shape
    diff = np.abs(got - ref)
    # OpenCV's uint8 bilinear uses 11-bit fixed-point weights: at most a grey level or two apart, rarely
    assert diff.max() <= 2 and diff.mean() < 0.25, (diff.max(), diff.mean())
    params = augment.LetterBox((640, 640), auto=rect, stride=32).get_params({"img": img})
    assert (g.top, g.left) == (params["top"], params["left"])
    assert g.resized_hw[::-1] == tuple(params["new_unpad"])
    exact, _ = ours(img, (640, 640), rect, backend="opencv")  # the CPU path: bit-identical
    assert np.array_equal(exact, ref)


def test_mixed_shapes_use_full_canvas_and_keep_each_geometry(rng):
    imgs = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(720, 1280), (480, 640), (720, 1280)]]
    canvas = canvas_shape([i.shape[:2] for i in imgs], (640, 640), 32, rect=True)
    assert canvas == (640, 640)
    out = torch.empty(3, 3, *canvas)
    geoms = letterbox_batch([torch.from_numpy(i).permute(2, 0, 1) for i in imgs], out, backend="torch")
    for img, g, row in zip(imgs, geoms, out):
        ref = augment.LetterBox((640, 640), auto=False)(image=img).astype(np.int16)
        got = (row.permute(1, 2, 0).numpy() * 255).round().astype(np.int16)
        assert np.abs(got - ref).max() <= 2
        assert g == letterbox_geometry(img.shape[:2], (640, 640))


@pytest.mark.parametrize("hw", [(720, 1280), (480, 640), (1000, 333), (5, 5)])
def test_boxes_back_to_original_match_scale_boxes(hw, rng):
    canvas = canvas_shape([hw], (640, 640), 32, rect=True)
    g = letterbox_geometry(hw, canvas)
    boxes = torch.tensor(rng.random((1, 50, 4)) * [canvas[1], canvas[0], 200, 200], dtype=torch.float32)
    boxes = xywh_to_xyxy(boxes)
    got = boxes_to_original(boxes, geometry_tensor([g], 1, torch.device("cpu")))[0]
    ref = ops.scale_boxes(canvas, boxes[0].clone(), hw)
    torch.testing.assert_close(got, ref, atol=1e-3, rtol=1e-5)


def test_channels_last_half_buffer_and_padding_value(rng):
    img = rng.integers(0, 256, (100, 300, 3), dtype=np.uint8)
    out = torch.zeros(2, 3, 640, 640).contiguous(memory_format=torch.channels_last)
    (g,) = letterbox_batch([torch.from_numpy(img).permute(2, 0, 1)], out[:1])
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out[0, :, 0, 0], torch.full((3,), 114 / 255))
    assert out[1].abs().sum() == 0  # rows past the batch untouched
    assert g.resized_hw == (213, 640) and g.top == 213
