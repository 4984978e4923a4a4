"""Deterministic photo-like sample images, for tests, benchmarks and BatchNorm calibration of random-init models.

Not a detection dataset (that is data/synth.py, which also writes clips): smooth multi-scale texture plus solid
shapes, so JPEG sizes and decode cost resemble photographs rather than noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def photo_like(rng: np.random.Generator, height: int, width: int, shapes: int = 8) -> np.ndarray:
    """[height, width, 3] uint8 RGB image with multi-scale texture and a few filled shapes."""
    img = np.zeros((height, width, 3), np.float32)
    for cells in (3, 12, 40):
        small = rng.random((cells, max(1, cells * width // max(1, height)), 3))
        up = Image.fromarray((small * 255).astype(np.uint8)).resize((width, height), Image.BILINEAR)
        img += np.asarray(up, np.float32)
    img = img / 3 + rng.normal(0, 2, img.shape)  # sensor-like grain
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    side = min(height, width)
    for _ in range(shapes):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        s = int(rng.integers(max(2, side // 12), max(3, side // 3)))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.ellipse([x0, y0, x0 + s, y0 + s], fill=color)
        elif kind == 1:
            draw.rectangle([x0, y0, x0 + s, y0 + int(s * 0.6)], fill=color)
        else:
            draw.polygon([(x0, y0 + s), (x0 + s // 2, y0), (x0 + s, y0 + s)], fill=color)
    return np.asarray(im)


def write_sample_images(out_dir: Path, n: int, size: tuple[int, int] = (720, 1280), seed: int = 0, quality: int = 90) -> list[Path]:
    """Write ``n`` JPEGs of ``size`` (height, width) to ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = out_dir / f"sample_{i:04d}.jpg"
        Image.fromarray(photo_like(rng, *size)).save(p, quality=quality)
        paths.append(p)
    return paths
