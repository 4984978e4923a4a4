"""JPEG header probing (routes files to nvJPEG or Pillow) and EXIF orientation on tensors vs Pillow."""

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from yolotune.data.samples import photo_like
from yolotune.io.decode import apply_exif_orientation, decode_with_pil
from yolotune.io.jpeg_header import read_jpeg_header


def jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


@pytest.fixture
def img(rng):
    return Image.fromarray(photo_like(rng, 48, 80))


def test_header_fields(img):
    h = read_jpeg_header(jpeg(img))
    assert (h.sof, h.height, h.width, h.components, h.orientation, h.complete) == (0xC0, 48, 80, 3, 1, True)
    assert h.gpu_decodable
    assert read_jpeg_header(jpeg(img, progressive=True)).sof == 0xC2
    assert not read_jpeg_header(jpeg(img, progressive=True)).gpu_decodable
    assert read_jpeg_header(jpeg(img.convert("L"))).components == 1
    assert read_jpeg_header(jpeg(img.convert("CMYK"))).components == 4
    data = jpeg(img)
    assert not read_jpeg_header(data[: len(data) // 2]).complete  # truncated: no end-of-image marker
    assert read_jpeg_header(b"\x89PNG\r\n\x1a\n") is None
    assert read_jpeg_header(b"") is None


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(img, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = jpeg(img, exif=exif, subsampling=0)
    assert read_jpeg_header(data).orientation == orientation
    stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))  # pixels as stored, not rotated
    rotated = apply_exif_orientation(torch.from_numpy(stored).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    np.testing.assert_array_equal(rotated, expected)
    np.testing.assert_array_equal(decode_with_pil(data), expected)
