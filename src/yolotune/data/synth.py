"""Procedural object-detection data: the 10 classes of ``shapes.py`` on real photographs, with real difficulty.

Objects from ~12 to ~400 px, several per image (some images empty), occluding each other and cut by the border,
clutter behind and in front, per-object lighting, blur, noise, lighting gradients and JPEG artefacts. Labels are
the tight box of each object's *visible* pixels; objects less than 40% visible are dropped from the labels.
Deterministic: image i of seed s depends only on (s, i), so any subset can be regenerated and work is parallel.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from yolotune.data.backgrounds import random_background
from yolotune.data.shapes import CLASS_NAMES, draw_object

SIZES = ((640, 640), (480, 640), (640, 480), (720, 1280), (512, 768))  # (height, width)


@dataclass(frozen=True)
class SynthConfig:
    min_object: int = 12
    max_object: int = 400
    max_objects: int = 10
    empty_fraction: float = 0.06
    min_visible: float = 0.4
    sizes: tuple[tuple[int, int], ...] = SIZES  # (height, width) choices; one size for a camera's frames


@dataclass(frozen=True)
class Box:
    class_id: int
    x1: float
    y1: float
    x2: float
    y2: float

    def yolo_line(self, w: int, h: int) -> str:
        cx, cy = (self.x1 + self.x2) / 2 / w, (self.y1 + self.y2) / 2 / h
        return f"{self.class_id} {cx:.6f} {cy:.6f} {(self.x2 - self.x1) / w:.6f} {(self.y2 - self.y1) / h:.6f}"


def _paste(canvas: np.ndarray, patch: Image.Image, x: int, y: int) -> np.ndarray:
    """Alpha-blend ``patch`` at (x, y) into the float canvas; returns the full-size coverage mask."""
    h, w = canvas.shape[:2]
    p = np.asarray(patch, np.float32)
    ph, pw = p.shape[:2]
    x0, y0, x1, y1 = max(0, x), max(0, y), min(w, x + pw), min(h, y + ph)
    mask = np.zeros((h, w), bool)
    if x0 >= x1 or y0 >= y1:
        return mask
    sub = p[y0 - y : y1 - y, x0 - x : x1 - x]
    alpha = sub[..., 3:4] / 255.0
    canvas[y0:y1, x0:x1] = canvas[y0:y1, x0:x1] * (1 - alpha) + sub[..., :3] * alpha
    mask[y0:y1, x0:x1] = sub[..., 3] > 127
    return mask


def _clutter(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    """A transparent layer of distractors that belong to no class: lines, scribbles and irregular blobs."""
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    for _ in range(int(rng.integers(0, 6))):
        color = tuple(int(c) for c in rng.integers(0, 256, 3)) + (255,)
        kind = rng.integers(0, 3)
        if kind == 0:
            d.line([tuple(rng.integers(0, [w, h])) for _ in range(2)], fill=color, width=int(rng.integers(1, 6)))
        elif kind == 1:
            pts = [tuple(rng.integers(0, [w, h])) for _ in range(int(rng.integers(3, 6)))]
            d.line(pts, fill=color, width=int(rng.integers(1, 4)), joint="curve")
        else:
            cx, cy, r = rng.integers(0, w), rng.integers(0, h), rng.integers(6, max(8, min(h, w) // 8))
            angles = np.sort(rng.uniform(0, 2 * math.pi, int(rng.integers(7, 13))))
            radii = r * rng.uniform(0.4, 1.0, len(angles))
            d.polygon([(cx + q * math.cos(a), cy + q * math.sin(a)) for a, q in zip(angles, radii)], fill=color)
    return layer


def render_scene(seed: int, index: int, cfg: SynthConfig = SynthConfig()) -> tuple[np.ndarray, list[Box]]:
    """Image ``index`` of dataset ``seed``: ([h, w, 3] uint8 RGB, visible boxes)."""
    rng = np.random.default_rng([seed, index])
    h, w = cfg.sizes[int(rng.integers(0, len(cfg.sizes)))]
    canvas = random_background(rng, h, w).astype(np.float32)
    _paste(canvas, _clutter(rng, h, w), 0, 0)  # clutter behind the objects
    n = 0 if rng.random() < cfg.empty_fraction else int(rng.integers(1, cfg.max_objects + 1))
    placed: list[tuple[int, np.ndarray]] = []
    for _ in range(n):
        class_id = int(rng.integers(0, len(CLASS_NAMES)))
        top = min(cfg.max_object, int(min(h, w) * 0.7))
        size = int(math.exp(rng.uniform(math.log(cfg.min_object), math.log(top))))
        patch = draw_object(class_id, size, rng)
        if rng.random() < 0.5:  # per-object lighting
            rgb = np.asarray(patch, np.float32)
            rgb[..., :3] = np.clip(rgb[..., :3] * rng.uniform(0.6, 1.3), 0, 255)
            patch = Image.fromarray(rgb.astype(np.uint8), "RGBA")
        pw, ph = patch.size
        x = int(rng.integers(-pw // 4, max(1, w - 3 * pw // 4)))
        y = int(rng.integers(-ph // 4, max(1, h - 3 * ph // 4)))
        placed.append((class_id, _paste(canvas, patch, x, y)))
    front = _paste(canvas, _clutter(rng, h, w), 0, 0) if rng.random() < 0.5 else np.zeros((h, w), bool)
    boxes = _visible_boxes(placed, front, cfg.min_visible)
    return _degrade(canvas, rng), boxes


def _visible_boxes(placed: list[tuple[int, np.ndarray]], front: np.ndarray, min_visible: float) -> list[Box]:
    boxes = []
    covered = front.copy()
    for class_id, mask in reversed(placed):  # later objects cover earlier ones
        area = mask.sum()
        visible = mask & ~covered
        covered |= mask
        if area == 0 or visible.sum() < min_visible * area:
            continue
        ys, xs = np.nonzero(visible)
        x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        if x2 - x1 >= 4 and y2 - y1 >= 4:
            boxes.append(Box(class_id, float(x1), float(y1), float(x2), float(y2)))
    return boxes[::-1]


def _degrade(canvas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = canvas.shape[:2]
    if rng.random() < 0.3:  # lighting gradient across the frame
        g = np.linspace(rng.uniform(0.6, 1.0), rng.uniform(1.0, 1.3), w if rng.random() < 0.5 else h, dtype=np.float32)
        canvas = canvas * (g[None, :, None] if g.shape[0] == w else g[:, None, None])
    if rng.random() < 0.5:
        canvas = canvas + rng.normal(0, rng.uniform(2, 8), canvas.shape)
    img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.6)))
    return np.asarray(img)


# ------------------------------------------------------------------------------------------------ writing
def _write_one(args) -> dict:
    out_dir, seed, index, cfg = args
    img, boxes = render_scene(seed, index, cfg)
    h, w = img.shape[:2]
    name = f"{index:06d}.jpg"
    quality = int(np.random.default_rng([seed, index, 1]).integers(40, 96))  # JPEG artefacts, some heavy
    Image.fromarray(img).save(Path(out_dir) / "images" / name, quality=quality)
    (Path(out_dir) / "labels" / f"{index:06d}.txt").write_text("".join(b.yolo_line(w, h) + "\n" for b in boxes))
    return {"file_name": name, "height": h, "width": w, "boxes": [(b.class_id, b.x1, b.y1, b.x2, b.y2) for b in boxes]}


def write_dataset(out_dir: str | Path, n: int, seed: int = 0, cfg: SynthConfig = SynthConfig(), workers: int | None = None,
                  progress=None) -> Path:
    """Write ``n`` images with YOLO txt labels, COCO ``annotations.json`` and an Ultralytics ``dataset.yaml``."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), seed, i, cfg) for i in range(n)]
    workers = workers or min(8, os.cpu_count() or 1)
    records = []
    # workers started afresh, not forked: callers (optimize) have thread pools running (OpenMP, ONNX Runtime,
    # OpenVINO), and a child forked while one of their threads holds a lock hangs on it
    context = multiprocessing.get_context("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
                                          else "spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        for rec in pool.map(_write_one, jobs, chunksize=8):
            records.append(rec)
            if progress is not None:
                progress(len(records), n)
    coco = {
        "info": {"description": f"yolotune synthetic detection data, seed {seed}", "version": "1"},
        "categories": [{"id": i, "name": name} for i, name in enumerate(CLASS_NAMES)],
        "images": [],
        "annotations": [],
    }
    ann_id = 0
    for image_id, rec in enumerate(records):
        coco["images"].append({"id": image_id, "file_name": rec["file_name"], "height": rec["height"], "width": rec["width"]})
        for class_id, x1, y1, x2, y2 in rec["boxes"]:
            ann_id += 1
            coco["annotations"].append({"id": ann_id, "image_id": image_id, "category_id": class_id,
                                        "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    (out / "annotations.json").write_text(json.dumps(coco))
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(CLASS_NAMES))
    (out / "dataset.yaml").write_text(f"path: {out.resolve()}\ntrain: images\nval: images\nnames:\n{names}\n")
    return out


CAMERA_BITRATE = 3_000_000  # bits/s of a camera's 720p30 H.264 (2-4 Mbit/s is usual): scaled by pixels and rate
CAMERA_NOISE = 4.0  # sensor noise, grey levels (standard deviation), new in every frame as a sensor's is
CAMERA_PAN = 0.2  # the view drifts across this share of a wider scene over the clip


def write_video(path: str | Path, frames: int = 90, size: tuple[int, int] = (360, 640), fps: int = 30, seed: int = 0,
                objects: int = 5, camera: bool = False) -> Path:
    """An H.264/MPEG-4 clip of objects moving over a photograph, and ``<name>.json`` with each frame's boxes.

    ``camera``: encoded like a camera's stream, so that decoding costs what a camera's does (a generated clip
    compresses far better): sensor noise in every frame, a slow pan, a keyframe a second, no B-frames, and a
    camera's bitrate (3 Mbit/s at 720p30, scaled by pixels and frame rate)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 10**6])
    h, w = size
    pan = int(w * CAMERA_PAN) if camera else 0
    scene = random_background(rng, h, w + pan).astype(np.float32)
    movers = []
    for _ in range(objects):
        class_id = int(rng.integers(0, len(CLASS_NAMES)))
        patch = draw_object(class_id, int(rng.integers(24, max(25, min(h, w) // 3))), rng)
        movers.append((class_id, patch, rng.uniform(0, w), rng.uniform(0, h), rng.uniform(-4, 4), rng.uniform(-3, 3)))
    truth = []
    with av.open(str(path), "w") as container:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream = container.add_stream(codec, rate=fps, options=_camera_encoding(h, w, fps, codec) if camera else {})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for t in range(frames):
            x0 = round(pan * t / max(1, frames - 1))
            canvas = scene[:, x0:x0 + w].copy()
            placed = []
            for class_id, patch, x, y, dx, dy in movers:
                px, py = int((x + dx * t) % (w + patch.size[0])) - patch.size[0] // 2, int((y + dy * t) % (h + patch.size[1])) - patch.size[1] // 2
                placed.append((class_id, _paste(canvas, patch, px, py)))
            boxes = _visible_boxes(placed, np.zeros((h, w), bool), 0.4)
            truth.append({"frame": t, "boxes": [[b.class_id, b.x1, b.y1, b.x2, b.y2] for b in boxes]})
            if camera:
                canvas += rng.normal(0.0, CAMERA_NOISE, canvas.shape).astype(np.float32)
            frame = av.VideoFrame.from_ndarray(np.clip(canvas, 0, 255).astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    path.with_suffix(".json").write_text(json.dumps({"classes": list(CLASS_NAMES), "fps": fps, "frames": truth}))
    return path


def _camera_encoding(h: int, w: int, fps: int, codec: str) -> dict:
    """Encoder options of a camera's stream: a keyframe a second, no B-frames, a capped bitrate."""
    bitrate = max(200_000, int(CAMERA_BITRATE * (h * w * fps) / (720 * 1280 * 30)))
    options = {"g": str(fps), "bf": "0", "b": str(bitrate), "maxrate": str(bitrate), "bufsize": str(2 * bitrate)}
    return {**options, "preset": "veryfast"} if codec == "libx264" else options
