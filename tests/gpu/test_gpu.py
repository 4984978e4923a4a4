"""GPU behaviour (marked `gpu`; scripts/gpu-check runs these on the GPU machine, CI skips them)."""

import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parents[1]))
from matching import matched_fraction  # noqa: E402
from models import save_biased_checkpoint  # noqa: E402
from test_nms import as_lists, make_case, reference  # noqa: E402

from yolotune import Detector  # noqa: E402
from yolotune.data.samples import photo_like, write_sample_images  # noqa: E402
from yolotune.io.decode import ImageDecoder, decode_with_pil  # noqa: E402
from yolotune.ops.letterbox import canvas_shape, letterbox_batch  # noqa: E402
from yolotune.ops.nms import batched_nms  # noqa: E402
from yolotune.types import InputRef  # noqa: E402

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


@pytest.mark.parametrize(
    "case,iou,max_det",
    [
        (dict(seed=0, B=16, K=2048, nc=80), 0.7, 300),
        (dict(seed=1, B=8, K=1500, nc=3, spread=200.0), 0.45, 300),  # dense overlap
        (dict(seed=2, B=4, K=777, nc=1, ties=True), 0.5, 300),
        (dict(seed=3, B=5, K=4096, nc=10, spread=5000.0), 0.6, 100),  # max_det overflow
        (dict(seed=4, B=3, K=64, nc=2), 0.7, 300),
    ],
)
def test_triton_nms_matches_torchvision(case, iou, max_det):
    boxes, scores, classes, counts = make_case(**case)
    if case["seed"] == 3:
        counts[:] = case["K"]
    keep, kept = batched_nms(boxes.to(CUDA), classes.to(CUDA), counts.to(CUDA), iou, max_det, backend="triton")
    assert as_lists(keep.cpu(), kept.cpu()) == reference(boxes, scores, classes, counts, iou, max_det)


def test_triton_nms_empty_and_all_suppressed():
    B, K = 3, 256
    boxes = torch.tensor([5.0, 5.0, 50.0, 50.0]).repeat(B, K, 1).to(CUDA)
    classes = torch.zeros(B, K, dtype=torch.int64, device=CUDA)
    counts = torch.tensor([0, K, 1], dtype=torch.int32, device=CUDA)
    keep, kept = batched_nms(boxes, classes, counts, 0.5, 300, backend="triton")
    assert kept.tolist() == [0, 1, 1] and keep[1, 0].item() == 0 and keep[2, 0].item() == 0


@pytest.mark.parametrize("hw", [(720, 1280), (1080, 1920), (480, 640), (1, 1), (37, 1001), (6000, 8000)])
def test_gpu_letterbox_matches_ultralytics(hw, rng):
    augment = pytest.importorskip("ultralytics.data.augment")
    img = photo_like(rng, *hw) if hw[0] * hw[1] < 5e6 else np.full((*hw, 3), 77, np.uint8)
    ref = augment.LetterBox((640, 640), auto=True, stride=32)(image=img).astype(np.int16)
    canvas = canvas_shape([hw], (640, 640), 32, True)
    out = torch.empty(1, 3, *canvas, dtype=torch.float16, device=CUDA).contiguous(memory_format=torch.channels_last)
    letterbox_batch([torch.from_numpy(img).permute(2, 0, 1).to(CUDA)], out)
    got = (out[0].float().permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.int16)
    diff = np.abs(got - ref)
    assert diff.max() <= 2 and diff.mean() < 0.25


def test_nvjpeg_decode_matches_pillow(tmp_path, rng):
    paths = write_sample_images(tmp_path, 6, size=(720, 1280), seed=5)
    dec = ImageDecoder(CUDA)
    out = dec.decode([(InputRef(str(p)), None) for p in paths])
    assert dec.stats["gpu"] == 6
    for p, d in zip(paths, out):
        ref = decode_with_pil(p.read_bytes()).astype(np.int16)
        got = d.tensor.permute(1, 2, 0).cpu().numpy().astype(np.int16)
        assert got.shape == ref.shape and np.abs(got - ref).mean() < 1.5


def test_exif_orientation_on_gpu_matches_pillow(tmp_path, rng):
    img = Image.fromarray(photo_like(rng, 60, 100))
    dec = ImageDecoder(CUDA)
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=95, subsampling=0, exif=exif)  # 4:4:4: no chroma upsampling differences
        (d,) = dec.decode([(InputRef(f"o{orientation}.jpg"), bytearray(buf.getvalue()))])
        ref = decode_with_pil(buf.getvalue()).astype(np.int16)
        got = d.tensor.permute(1, 2, 0).cpu().numpy().astype(np.int16)
        assert got.shape == ref.shape, orientation
        assert np.abs(got - ref).mean() < 2.0, orientation
    assert dec.stats["gpu"] == 8


@pytest.fixture
def exact_fp32():
    """FP32 without TF32 and with deterministic cuDNN: runs that must agree bit for bit can be compared."""
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, False, False
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_biased_checkpoint(tmp_path_factory.mktemp("m") / "v8n.pt")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    return [str(p) for p in write_sample_images(d, 8, size=(720, 1280), seed=3)]


def test_cuda_graph_equals_eager(checkpoint, images, exact_fp32):
    runs = []
    for graph in (True, False):
        with Detector(str(checkpoint), device="cuda", batch=4, cuda_graph=graph, half=False) as det:
            assert det.uses_cuda_graph is graph
            runs.append([(r.boxes, r.scores, r.class_ids) for r in det.predict(images)])
    for a, b in zip(*runs):
        np.testing.assert_allclose(a[0], b[0], atol=1e-3)
        np.testing.assert_array_equal(a[2], b[2])


def test_partial_batches_and_repeated_runs(checkpoint, images, exact_fp32):
    with Detector(str(checkpoint), device="cuda", batch=4, half=False) as det:
        first = [(r.boxes, r.class_ids) for r in det.predict(images[:7])]  # 4 + 3: the 3 run in the 4-bucket
        second = [(r.boxes, r.class_ids) for r in det.predict(images[:7])]
        # the in-memory path on the very pixels the GPU decoder produced
        pixels = [d.tensor.permute(1, 2, 0).cpu().numpy() for d in det.decoder.decode([(InputRef(p), None) for p in images[:7]])]
        direct = [(r.boxes, r.class_ids) for r in det.detect(pixels)]
    assert sum(len(c) for _, c in first) > 0
    for a, b, c in zip(first, second, direct):
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], c[1])
        np.testing.assert_allclose(a[0], c[0], atol=1e-3)


@pytest.mark.parametrize("half", [False, True])
def test_gpu_matches_ultralytics_predict(checkpoint, images, half, request):
    """Ultralytics-identical input pixels (preprocess="cpu"), model and NMS on the GPU, >= 99% of boxes matched.

    FP32 on both sides without TF32 (exact_fp32): with it, which convolution algorithms cuDNN picked depended on the
    autotuning state earlier tests left in the process, and agreement fell to 98.85% once (this test after the
    optimize tests, H100, 2026-11-24).

    The default GPU input path (nvJPEG, device letterbox) differs from libjpeg/OpenCV by a grey level or two, which
    a random-init network turns into different boxes; benchmarks/e2e.py reports that agreement as a measurement,
    and the trained default model makes it checkable."""
    ultralytics = pytest.importorskip("ultralytics")
    if not half:
        request.getfixturevalue("exact_fp32")
    model = ultralytics.YOLO(str(checkpoint))
    ref = []
    for k in range(0, len(images), 4):
        for r in model.predict(images[k : k + 4], device=0, half=half, verbose=False):
            b = r.boxes
            ref.append((b.xyxy.cpu().numpy(), b.conf.cpu().numpy(), b.cls.cpu().numpy().astype(np.int64)))
    with Detector(str(checkpoint), device="cuda", batch=4, half=half, preprocess="cpu") as det:
        got = [(r.boxes, r.scores, r.class_ids) for r in det.predict(images)]
    frac, total = matched_fraction(ref, got)
    back, _ = matched_fraction(got, ref)
    print(f"GPU agreement with Ultralytics (half={half}): {frac:.4f} of {total} boxes, {back:.4f} back")
    # FP16 rounding alone (different cuDNN kernels on each side) flips about 1% of a random-init network's boxes
    # (measured 98.5-99.3%); the trained default model holds FP16 to the 0.99 bar as well.
    bound = 0.97 if half else 0.99
    assert total > 100 and frac >= bound and back >= bound


def test_end2end_head_skips_nms():
    with Detector("yolo26n.yaml", device="cuda", batch=2, end2end=True, class_bias=-2.0) as det:
        assert det.model.spec.layout == "end2end"
        out = det.detect([np.full((360, 640, 3), 90, np.uint8), photo_like(np.random.default_rng(0), 360, 640)])
    assert all(len(r) <= 300 and np.all(np.diff(r.scores) <= 0) for r in out)


def test_bad_inputs_on_gpu_path(bad_inputs):
    with Detector("yolov8n.yaml", device="cuda", batch=4) as det:
        results = list(det.predict([str(bad_inputs.root)]))
    bad_inputs.check(results)


def test_trained_default_matches_ultralytics_fp16(tmp_path):
    """Trained model, FP16, Ultralytics-identical input pixels: >= 99% of Ultralytics' boxes reproduced."""
    ultralytics = pytest.importorskip("ultralytics")
    from yolotune.assets import resolve
    from yolotune.data.synth import write_dataset

    scenes = write_dataset(tmp_path / "scenes", 32, seed=4242, workers=8)
    images = sorted(str(p) for p in (scenes / "images").iterdir())
    model = ultralytics.YOLO(str(resolve("default")))
    ref = []
    for k in range(0, len(images), 8):
        for r in model.predict(images[k : k + 8], device=0, half=True, verbose=False):
            ref.append((r.boxes.xyxy.cpu().numpy(), r.boxes.conf.cpu().numpy(), r.boxes.cls.cpu().numpy().astype(np.int64)))
    with Detector("default", device="cuda", batch=8, half=True, preprocess="cpu") as det:
        got = [(r.boxes, r.scores, r.class_ids) for r in det.predict(images)]
    frac, total = matched_fraction(ref, got)
    back, _ = matched_fraction(got, ref)
    print(f"trained default, FP16, Ultralytics-identical pixels: {frac:.4f} of {total} boxes, {back:.4f} back")
    assert total > 80 and frac >= 0.99 and back >= 0.99


def test_gpu_input_path_keeps_accuracy(tmp_path):
    """nvJPEG + device letterbox give slightly different pixels from libjpeg + OpenCV (box-level agreement with
    Ultralytics measured 71% under IoU 0.9 / score 0.02); what matters is accuracy: mAP within 1 point."""
    from yolotune.data.synth import write_dataset
    from yolotune.data.validate import validate

    scenes = write_dataset(tmp_path / "scenes", 200, seed=777, workers=16)
    maps = {}
    for preprocess in ("gpu", "cpu"):
        with Detector("default", device="cuda", batch=32, half=True, conf=0.001, preprocess=preprocess) as det:
            maps[preprocess] = validate(det, scenes).map50_95
    print(f"trained default mAP50-95 on 200 scenes: nvJPEG path {maps['gpu']:.4f}, CPU path {maps['cpu']:.4f}")
    assert abs(maps["gpu"] - maps["cpu"]) <= 0.01
