"""Batched greedy NMS equals torchvision.ops.batched_nms, image by image (kept indices and order)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from yolotune.ops.nms import batched_nms, nms_torchvision


def make_case(seed: int, B: int, K: int, nc: int, ties: bool = False, spread: float = 600.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(B, K, 2, generator=g) * spread
    wh = torch.rand(B, K, 2, generator=g) * 120 + 2
    boxes = torch.cat([xy, xy + wh], dim=-1)
    scores = torch.rand(B, K, generator=g)
    if ties:
        scores = (scores * 8).floor() / 8  # many exactly equal scores
    classes = torch.randint(0, nc, (B, K), generator=g)
    counts = torch.randint(0, K + 1, (B,), generator=g).to(torch.int32)
    # the contract: candidates sorted by descending score (stable), valid rows are a prefix
    scores, order = torch.sort(scores, dim=1, descending=True, stable=True)
    boxes = boxes.gather(1, order[..., None].expand(-1, -1, 4))
    classes = classes.gather(1, order)
    return boxes, scores, classes, counts


def reference(boxes, scores, classes, counts, iou, max_det):
    """torchvision per image, kept positions ordered by (score desc, position asc), cut to max_det."""
    out = []
    for b in range(boxes.shape[0]):
        n = int(counts[b])
        keep = torchvision.ops.batched_nms(boxes[b, :n], scores[b, :n], classes[b, :n], iou)
        keep = sorted(keep.tolist(), key=lambda i: (-float(scores[b, i]), i))
        out.append(keep[:max_det])
    return out


def as_lists(keep, kept):
    return [keep[b, : int(kept[b])].tolist() for b in range(keep.shape[0])]


CASES = [
    dict(seed=0, B=4, K=300, nc=3),
    dict(seed=1, B=3, K=500, nc=1, ties=True),
    dict(seed=2, B=5, K=200, nc=80),
    dict(seed=3, B=2, K=1000, nc=2, spread=100.0),  # dense overlap, long suppression chains
    dict(seed=4, B=8, K=64, nc=4, ties=True),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("iou", [0.45, 0.7])
def test_batched_nms_matches_torchvision_per_image(case, iou):
    boxes, scores, classes, counts = make_case(**case)
    keep, kept = nms_torchvision(boxes, classes, counts, iou, max_det=300)
    assert as_lists(keep, kept) == reference(boxes, scores, classes, counts, iou, 300)


@pytest.mark.parametrize("case", CASES[:4])
def test_per_image_loop_backend_equals_the_batched_one(case):
    # the profiler's "plain" baseline must compute the same NMS, only slower
    boxes, scores, classes, counts = make_case(**case)
    loop = batched_nms(boxes, classes, counts, 0.6, max_det=100, backend="loop")
    assert as_lists(*loop) == reference(boxes, scores, classes, counts, 0.6, 100)


def test_negative_coordinates_do_not_mix_groups():
    """Boxes hanging off the top-left edge (negative x1/y1) must not overlap another group's offset region."""
    boxes, scores, classes, counts = make_case(seed=9, B=4, K=300, nc=6, spread=50.0)
    boxes = boxes - 80.0
    keep, kept = nms_torchvision(boxes, classes, counts, 0.5, max_det=300)
    assert as_lists(keep, kept) == reference(boxes, scores, classes, counts, 0.5, 300)


def test_max_det_overflow_keeps_highest_scores():
    boxes, scores, classes, counts = make_case(seed=7, B=3, K=800, nc=5, spread=3000.0)
    counts[:] = 800
    keep, kept = nms_torchvision(boxes, classes, counts, 0.5, max_det=50)
    assert kept.tolist() == [50, 50, 50]
    assert as_lists(keep, kept) == reference(boxes, scores, classes, counts, 0.5, 50)


def test_empty_images_and_empty_batch():
    boxes, scores, classes, counts = make_case(seed=8, B=4, K=100, nc=3)
    counts[:] = 0
    keep, kept = batched_nms(boxes, classes, counts, 0.5, max_det=10)
    assert kept.tolist() == [0, 0, 0, 0] and keep.shape == (4, 10)
    keep, kept = batched_nms(boxes[:0], classes[:0], counts[:0], 0.5, max_det=10)
    assert keep.shape == (0, 10) and kept.shape == (0,)


def test_all_suppressed_but_the_best():
    B, K = 2, 50
    boxes = torch.tensor([10.0, 10.0, 110.0, 110.0]).repeat(B, K, 1)
    boxes[..., 2:] += torch.linspace(0, 1, K)[None, :, None]  # near-identical boxes
    classes = torch.zeros(B, K, dtype=torch.int64)
    counts = torch.tensor([K, K], dtype=torch.int32)
    keep, kept = nms_torchvision(boxes, classes, counts, 0.5, max_det=300)
    assert kept.tolist() == [1, 1] and keep[:, 0].tolist() == [0, 0]


def test_class_aware():
    boxes = torch.tensor([[[0.0, 0, 100, 100], [1, 1, 101, 101], [2, 2, 102, 102]]])
    counts = torch.tensor([3], dtype=torch.int32)
    keep, kept = nms_torchvision(boxes, torch.tensor([[0, 1, 0]]), counts, 0.5, max_det=10)
    assert as_lists(keep, kept) == [[0, 1]]
    keep, kept = nms_torchvision(boxes, torch.zeros(1, 3, dtype=torch.int64), counts, 0.5, max_det=10)
    assert as_lists(keep, kept) == [[0]]


_TRITON_SCRIPT = r"""
import sys, torch
sys.path.insert(0, {tests!r})
from test_nms import make_case, reference, as_lists
from yolotune.ops.nms_triton import nms_triton
for case, iou, max_det in [
    (dict(seed=0, B=3, K=130, nc=3), 0.5, 300),
    (dict(seed=1, B=2, K=200, nc=1, ties=True), 0.6, 300),
    (dict(seed=3, B=2, K=150, nc=2, spread=80.0), 0.45, 300),
    (dict(seed=7, B=2, K=150, nc=2, spread=3000.0), 0.5, 20),
]:
    boxes, scores, classes, counts = make_case(**case)
    keep, kept = nms_triton(boxes, classes, counts, iou, max_det)
    got, want = as_lists(keep, kept), reference(boxes, scores, classes, counts, iou, max_det)
    assert got == want, (case, got, want)
print("triton-interpreter-ok")
"""


@pytest.mark.slow
def test_triton_kernels_match_torchvision_in_interpreter():
    """The GPU kernels, run by Triton's CPU interpreter, give torchvision's answer (GPU runs are in tests/gpu)."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    script = _TRITON_SCRIPT.format(tests=str(Path(__file__).parent))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert "triton-interpreter-ok" in proc.stdout, proc.stderr[-3000:]


_FINALIZE_SCRIPT = r"""
import torch
from yolotune.ops.postprocess import finalize
g = torch.Generator().manual_seed(0)
B, K, M = 3, 50, 20
boxes = torch.rand(B, K, 4, generator=g) * 640
scores = torch.rand(B, K, generator=g)
classes = torch.randint(0, 80, (B, K), generator=g)
keep = torch.randint(0, K, (B, M), generator=g)
kept = torch.tensor([0, 7, 20], dtype=torch.int32)
geometry = torch.tensor([[0.5, 0.5, 0.0, 12.0, 720.0, 1280.0], [1.0, 1.0, 3.0, 0.0, 300.0, 200.0], [2.0, 1.5, 0.0, 0.0, 100.0, 100.0]])
from yolotune.ops.nms_triton import finalize_triton
got = finalize_triton(boxes, scores, classes, keep, kept, geometry)
want = finalize(boxes, scores, classes, keep, kept, geometry, backend="torch")
assert torch.equal(got, want), (got - want).abs().max()
print("finalize-ok")
"""


def test_triton_finalize_matches_torch_in_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", _FINALIZE_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert "finalize-ok" in proc.stdout, proc.stderr[-3000:]
