"""A folder of awkward inputs, and what each must come back as (detections or an error record)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from yolotune.data.samples import photo_like
from yolotune.types import Detections, ErrorRecord

# name -> expected decoded (height, width), or None when the input must become an error record
EXPECTED = {
    "good.jpg": (720, 1280),
    "名前 with space.jpg": (120, 160),
    "progressive.jpg": (200, 300),
    "cmyk.jpg": (64, 96),
    "gray.jpg": (100, 80),
    "gray.png": (50, 70),
    "rgba.png": (90, 60),
    "sixteen_bit.png": (40, 30),
    "tiny.png": (1, 1),
    "thin.bmp": (2, 500),
    "photo.webp": (100, 150),
    "jpeg_named.png": (100, 120),  # wrong extension: content decides
    "huge.jpg": (6000, 8000),
    "corrupt.jpg": None,
    "truncated.jpg": None,
    "empty.jpg": None,
    "notes.jpg": None,  # text file named like an image
    "dir.jpg": None,  # directory named like an image
}


def _jpeg(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


@dataclass
class BadInputs:
    root: Path

    @classmethod
    def create(cls, root: Path, rng: np.random.Generator) -> "BadInputs":
        root.mkdir(parents=True, exist_ok=True)
        (root / "good.jpg").write_bytes(_jpeg(photo_like(rng, 720, 1280)))
        (root / "名前 with space.jpg").write_bytes(_jpeg(photo_like(rng, 120, 160)))
        (root / "progressive.jpg").write_bytes(_jpeg(photo_like(rng, 200, 300), progressive=True))
        Image.fromarray(photo_like(rng, 64, 96)).convert("CMYK").save(root / "cmyk.jpg", quality=90)
        Image.fromarray(photo_like(rng, 100, 80)).convert("L").save(root / "gray.jpg", quality=90)
        Image.fromarray(photo_like(rng, 50, 70)).convert("L").save(root / "gray.png")
        rgba = np.dstack([photo_like(rng, 90, 60), np.full((90, 60), 128, np.uint8)])
        Image.fromarray(rgba, "RGBA").save(root / "rgba.png")
        Image.fromarray((rng.random((40, 30)) * 65535).astype(np.uint16)).save(root / "sixteen_bit.png")
        Image.fromarray(np.full((1, 1, 3), 200, np.uint8)).save(root / "tiny.png")
        Image.fromarray(photo_like(rng, 2, 500)).save(root / "thin.bmp")
        Image.fromarray(photo_like(rng, 100, 150)).save(root / "photo.webp")
        (root / "jpeg_named.png").write_bytes(_jpeg(photo_like(rng, 100, 120)))
        (root / "huge.jpg").write_bytes(_jpeg(np.full((6000, 8000, 3), 90, np.uint8)))
        good = (root / "good.jpg").read_bytes()
        (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff" + bytes(rng.integers(0, 256, 5000, dtype=np.uint8)))
        (root / "truncated.jpg").write_bytes(good[: len(good) // 2])
        (root / "empty.jpg").write_bytes(b"")
        (root / "notes.jpg").write_text("this is not an image\n")
        (root / "dir.jpg").mkdir()
        (root / "labels.txt").write_text("not media: skipped, counted\n")
        return cls(root)

    def check(self, results: list) -> None:
        by_name = {Path(r.source.path).name: r for r in results}
        assert set(by_name) == set(EXPECTED), set(by_name) ^ set(EXPECTED)
        for name, hw in EXPECTED.items():
            r = by_name[name]
            if hw is None:
                assert isinstance(r, ErrorRecord), (name, r)
                assert r.reason and r.source.path.endswith(name)
            else:
                assert isinstance(r, Detections), (name, getattr(r, "reason", r))
                assert r.image_size == hw, (name, r.image_size)
                assert np.isfinite(r.boxes).all() and (r.boxes[:, 2] <= hw[1] + 1e-3).all()
