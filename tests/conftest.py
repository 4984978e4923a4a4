import os

import numpy as np
import pytest
import torch

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="GPU test: no CUDA device here (scripts/gpu-check runs these)")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


def photo_like(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """An RGB uint8 image with structure at several scales plus a few solid shapes (compresses like a photo)."""
    from PIL import Image, ImageDraw

    img = np.zeros((h, w, 3), np.float32)
    for cells in (3, 12, 48):
        small = rng.random((cells, max(1, cells * w // h), 3)).astype(np.float32)
        img += np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR), np.float32)
    im = Image.fromarray(np.clip(img / 3, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        s = int(rng.integers(max(4, min(h, w) // 12), max(5, min(h, w) // 3)))
        color = tuple(int(c) for c in rng.integers(0, 255, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x0 + s, y0 + s], fill=color)
    return np.asarray(im)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
