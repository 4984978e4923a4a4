"""JPEGs decoded by the GPU's hardware decoders (marked `gpu`; needs nvImageCodec, the jpeg extra): pixels against
CUDA nvJPEG and Pillow, what the hardware refuses reaching the next decoder, the split, predict on either path."""

import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from yolotune import Detector
from yolotune.data.samples import photo_like, write_sample_images
from yolotune.io.decode import ImageDecoder, decode_with_pil
from yolotune.types import ErrorRecord, InputRef

pytestmark = pytest.mark.gpu
jpeg_hardware = pytest.importorskip("yolotune.io.jpeg_hardware")
if not jpeg_hardware.available():
    pytest.skip("nvImageCodec is not installed (the jpeg extra)", allow_module_level=True)
sys.path.insert(0, str(Path(__file__).parents[1]))
CUDA = torch.device("cuda")


def _jpeg(rng, **save) -> bytearray:
    buf = io.BytesIO()
    Image.fromarray(photo_like(rng, 96, 160)).save(buf, "JPEG", **save)
    return bytearray(buf.getvalue())


def test_hardware_decode_matches_cuda_nvjpeg(tmp_path):
    paths = write_sample_images(tmp_path, 12, size=(720, 1280), seed=7)
    hw = ImageDecoder(CUDA, jpeg_decode="hardware", hardware_share=1.0, batch=8)
    cuda = ImageDecoder(CUDA, jpeg_decode="cuda")
    items = [(InputRef(str(p)), None) for p in paths]
    got, want = hw.decode(items), cuda.decode(items)
    assert hw.stats["hardware"] == 12 and hw.stats["hardware_refused"] == 0, hw.stats
    for g, w in zip(got, want):
        diff = (g.tensor.int() - w.tensor.int()).abs().float()
        assert g.tensor.shape == w.tensor.shape and g.tensor.is_cuda and diff.mean() < 1.0, diff.mean()


def test_every_kind_of_input_reaches_a_decoder_or_an_error(rng):
    """Subsamplings NVJPG takes, and what it does not (progressive, CMYK, grey, not a JPEG, truncated)."""
    good = {f"s{sub}": _jpeg(rng, quality=90, subsampling=sub) for sub in (0, 1, 2)}
    other = {"progressive": _jpeg(rng, progressive=True), "png": bytearray(b"\x89PNG\r\n\x1a\n" + b"0" * 40)}
    buf = io.BytesIO()
    Image.fromarray(photo_like(rng, 64, 64)).convert("CMYK").save(buf, "JPEG")
    other["cmyk"] = bytearray(buf.getvalue())
    buf = io.BytesIO()
    Image.fromarray(photo_like(rng, 64, 64)).convert("L").save(buf, "JPEG")
    other["grey"] = bytearray(buf.getvalue())
    other["truncated"] = good["s2"][: len(good["s2"]) // 2]
    dec = ImageDecoder(CUDA, jpeg_decode="hardware", hardware_share=1.0)
    inputs = {**good, **other}
    out = dict(zip(inputs, dec.decode([(InputRef(k), v) for k, v in inputs.items()])))
    assert dec.stats["hardware"] == 3, dec.stats
    for k in good:
        ref = decode_with_pil(bytes(good[k])).astype(np.int16)
        got = out[k].tensor.permute(1, 2, 0).cpu().numpy().astype(np.int16)
        assert np.abs(got - ref).mean() < 2.0, k
    assert isinstance(out["png"], ErrorRecord)
    for k in ("progressive", "cmyk", "grey", "truncated"):  # Pillow's: a picture, or (truncated) an error record
        assert isinstance(out[k], ErrorRecord) or out[k].tensor.shape[0] == 3, k


def test_the_split_measures_both_decoders(tmp_path):
    paths = write_sample_images(tmp_path, 32, size=(360, 640), seed=3)
    dec = ImageDecoder(CUDA, jpeg_decode="hardware", batch=16)
    for _ in range(3):
        out = dec.decode([(InputRef(str(p)), None) for p in paths])
        assert all(not isinstance(o, ErrorRecord) for o in out)
    torch.cuda.synchronize()
    d = dec.describe()
    assert set(d["rates_per_s"]) == {"hardware", "cuda"} and 0 < d["hardware_share"] < 1, d
    assert 0 < dec.stats["hardware"] < dec.stats["gpu"] == 96


def test_predict_on_hardware_decode_matches_cuda(tmp_path):
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from matching import matched_fraction

    paths = [str(p) for p in write_sample_images(tmp_path, 24, size=(720, 1280), seed=11)]
    rows = lambda rs: [(r.boxes, r.scores, r.class_ids) for r in rs]  # noqa: E731
    with Detector("default", device="cuda", batch=8, jpeg_decode="cuda") as det:
        want = list(det.predict(paths))
    with Detector("default", device="cuda", batch=8, jpeg_decode="hardware", hardware_share=1.0) as det:
        assert det.describe()["jpeg_decode"] == "hardware"
        got = list(det.predict(paths))
    frac, total = matched_fraction(rows(want), rows(got), iou=0.85, score_tol=0.05)
    assert total > 20 and frac >= 0.95, (frac, total)
