"""Shared by the benchmarks: real-photo JPEG sets, result logging, environment description."""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


def photo_sources() -> list[np.ndarray]:
    """Real photographs available offline: the two that Ultralytics ships, plus scikit-image's if installed."""
    from PIL import Image

    photos = []
    try:
        import ultralytics

        assets = Path(ultralytics.__file__).parent / "assets"
        photos += [np.asarray(Image.open(assets / n).convert("RGB")) for n in ("bus.jpg", "zidane.jpg")]
    except Exception:
        pass
    try:
        from skimage import data

        photos += [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    except Exception:
        pass
    if not photos:
        raise RuntimeError("no real photographs available: install ultralytics or scikit-image")
    return photos


def make_photo_jpegs(out_dir: Path, n: int, size=(720, 1280), seed: int = 0, quality: int = 90) -> list[str]:
    """``n`` distinct JPEGs of ``size`` cut from real photographs (random crop, scale, flip, colour shift)."""
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    photos = photo_sources()
    h, w = size
    paths = []
    for i in range(n):
        src = photos[i % len(photos)]
        sh, sw = src.shape[:2]
        scale = rng.uniform(0.6, 1.0)
        ch, cw = int(sh * scale), int(sw * scale)
        y, x = int(rng.integers(0, sh - ch + 1)), int(rng.integers(0, sw - cw + 1))
        crop = src[y : y + ch, x : x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        im = Image.fromarray(np.ascontiguousarray(crop)).resize((w, h), Image.BILINEAR)
        arr = np.clip(np.asarray(im, np.float32) * rng.uniform(0.8, 1.2, 3) + rng.uniform(-15, 15), 0, 255)
        p = out_dir / f"photo_{i:04d}.jpg"
        Image.fromarray(arr.astype(np.uint8)).save(p, quality=quality)
        paths.append(str(p))
    return paths


def environment() -> dict:
    import torch
    import torchvision

    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cpu_count": os.cpu_count(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }
    try:
        import ultralytics

        env["ultralytics"] = ultralytics.__version__
    except Exception:
        pass
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:
        pass
    return env


class Log:
    """Append JSON lines as results come, so a run cut short still leaves its data."""

    def __init__(self, name: str):
        out = os.environ.get("OUT") or tempfile.mkdtemp(prefix="bench-")
        Path(out).mkdir(parents=True, exist_ok=True)
        self.path = Path(out) / f"{name}.jsonl"
        self.rows: list[dict] = []
        self.t0 = time.time()
        self._f = open(self.path, "a")

    def emit(self, **row) -> dict:
        row["t"] = round(time.time() - self.t0, 1)
        self.rows.append(row)
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        print(json.dumps(row), flush=True)
        return row

    def elapsed(self) -> float:
        return time.time() - self.t0


def percentile_ms(samples: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(samples) * 1e3, q)), 3)


def run_seconds(default: float) -> float:
    """How long each run lasts: RUN_SECONDS, else SECONDS. Bash's SECONDS is its clock: set in a command line, it
    grows while scripts/gpu-check runs the steps before the benchmark, so RUN_SECONDS is the one to set."""
    return float(os.environ.get("RUN_SECONDS") or os.environ.get("SECONDS") or default)
