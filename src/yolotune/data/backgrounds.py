"""Real photographs for backgrounds: the ones scikit-image ships, read as plain image files (no import, no download)."""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "grass.png", "gravel.png",
          "hubble_deep_field.jpg", "motorcycle_left.png", "rocket.jpg", "color.png", "coins.png", "moon.png", "page.png")


@lru_cache(maxsize=1)
def background_photos() -> tuple[np.ndarray, ...]:
    """RGB uint8 photographs; raises with a clear message when scikit-image is not installed."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("background photographs come from scikit-image's data files: pip install scikit-image")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    photos = []
    for name in PHOTOS:
        path = folder / name
        if path.is_file():
            photos.append(np.asarray(Image.open(path).convert("RGB")))
    if not photos:
        raise RuntimeError(f"no background photographs found in {folder}")
    return tuple(photos)


def random_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random crop of a photograph, resized to (height, width), flipped and colour-shifted at random."""
    photo = background_photos()[int(rng.integers(0, len(background_photos())))]
    ph, pw = photo.shape[:2]
    scale = rng.uniform(0.35, 1.0)
    ch = max(8, int(min(ph, pw * height / width) * scale))
    cw = max(8, int(ch * width / height))
    cw = min(cw, pw)
    y, x = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
    crop = photo[y : y + ch, x : x + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if rng.random() < 0.3:
        crop = crop[::-1]
    im = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((width, height), Image.BILINEAR), np.float32)
    im = im * rng.uniform(0.7, 1.3, 3) + rng.uniform(-25, 25)
    return np.clip(im, 0, 255).astype(np.uint8)
