"""Where results go: JSONL (one record per input), COCO results JSON, annotated images. Registered by name."""

from __future__ import annotations

import colorsys
import functools
import json
import os
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from yolotune.types import Detections, ErrorRecord, Result


class Sink(ABC):
    """Receives every result in input order; ``close`` flushes and returns what it wrote."""

    name = "sink"

    @abstractmethod
    def write(self, result: Result) -> None: ...

    def close(self) -> list[str]:
        return []

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class OutputNames:
    """Where each input's annotated output goes under a sink's folder: its path relative to the folder all inputs
    share, with its file name kept whole (``v1/cam.mp4`` and ``v2/cam.mp4``, ``a.jpg`` and ``a.png`` never meet), and
    ``-2``, ``-3`` for anything that still would."""

    def __init__(self, paths: Iterable[str] = ()):
        parents = [os.path.dirname(os.path.abspath(p)) for p in paths]
        try:
            self.root = os.path.commonpath(parents) if parents else None
        except ValueError:  # different drives
            self.root = None
        self._used: set[str] = set()

    def relative(self, path: str) -> str:
        """``path`` relative to the inputs' shared folder, as a safe relative path (never leaving the sink's)."""
        full = os.path.abspath(path)
        rel = os.path.relpath(full, self.root) if self.root else os.path.basename(full)
        parts = [re.sub(r"[\x00-\x1f]", "_", p) for p in Path(rel).parts if p not in ("", ".", "..", os.sep)]
        return "/".join(parts) or "input"

    def claim(self, name: str) -> str:
        """``name`` (a relative path), or with -2, -3 before its extension when already given out."""
        stem, ext = os.path.splitext(name)
        candidate, k = name, 1
        while candidate.lower() in self._used:
            k += 1
            candidate = f"{stem}-{k}{ext}"
        self._used.add(candidate.lower())
        return candidate


_SINKS: dict[str, Callable[..., Sink]] = {}


def register_sink(name: str):
    def wrap(cls):
        cls.name = name
        _SINKS[name] = cls
        return cls

    return wrap


def sink_names() -> list[str]:
    return sorted(_SINKS)


def make_sink(name: str, out_dir: Path, names: OutputNames | None = None) -> Sink:
    """The sink registered as ``name``, writing under ``out_dir``; ``names`` places per-input files (images, videos)."""
    if name not in _SINKS:
        raise ValueError(f"unknown output format {name!r}; choose from {', '.join(sink_names())}")
    return _SINKS[name](out_dir, names=names or OutputNames())


@register_sink("jsonl")
class JsonlSink(Sink):
    """``detections.jsonl``: one JSON object per input, detections or ``{"ok": false, "error": ...}``."""

    def __init__(self, out_dir: Path, names: OutputNames | None = None):
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / "detections.jsonl"
        self._f = open(self.path, "w", encoding="utf-8")

    def write(self, result: Result) -> None:
        self._f.write(json.dumps(result.to_dict(), ensure_ascii=False) + "\n")

    def close(self) -> list[str]:
        if not self._f.closed:
            self._f.close()
        return [str(self.path)]


@register_sink("coco")
class CocoSink(Sink):
    """``coco_results.json`` (COCO detection results) and ``coco_images.json`` (image ids -> files).

    Image ids are the file stem when it is a number (COCO's own naming), else the input's position.
    """

    def __init__(self, out_dir: Path, names: OutputNames | None = None):
        out_dir.mkdir(parents=True, exist_ok=True)
        self.results_path = out_dir / "coco_results.json"
        self.images_path = out_dir / "coco_images.json"
        self.results: list[dict] = []
        self.images: list[dict] = []
        self._next_id = 0

    def write(self, result: Result) -> None:
        self._next_id += 1
        if isinstance(result, ErrorRecord):
            return
        stem = Path(result.source.path).stem
        image_id = int(stem) if stem.isdigit() and result.source.frame is None else self._next_id
        h, w = result.image_size
        self.images.append({"id": image_id, "file_name": result.source.label, "height": h, "width": w})
        self.results.extend(result.to_coco(image_id))

    def close(self) -> list[str]:
        self.results_path.write_text(json.dumps(self.results))
        self.images_path.write_text(json.dumps(self.images, ensure_ascii=False))
        return [str(self.results_path), str(self.images_path)]


def class_color(class_id: int) -> tuple[int, int, int]:
    h = (class_id * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(image: np.ndarray, det: Detections) -> "Image.Image":
    """An RGB PIL image with boxes and labels drawn on ``image`` ([h, w, 3] uint8)."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(image)
    draw = ImageDraw.Draw(im)
    short = min(im.size)
    width = max(1, round(short / 300))  # lines and text grow with the image: readable on 4000x3000 and on 128x96
    font = _label_font(max(10, round(short / 45)))
    for box, score, cls, name in zip(det.boxes, det.scores, det.class_ids, det.class_names):
        color = class_color(int(cls))
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle([x1, y1, x2, y2], outline=color, width=width)
        label = f"{name} {score:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        pad = max(1, width // 2)
        tx, ty = x1, max(0.0, y1 - (bottom - top) - 2 * pad)
        draw.rectangle([tx, ty, tx + right - left + 2 * pad, ty + bottom - top + 2 * pad], fill=color)
        draw.text((tx + pad - left, ty + pad - top), label, fill=(0, 0, 0), font=font)
    return im


@functools.lru_cache(maxsize=32)
def _label_font(size: int):
    """Pillow's own scalable font (needs FreeType, which Pillow's wheels carry); its fixed bitmap font otherwise."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1, or built without FreeType
        return ImageFont.load_default()


@register_sink("images")
class AnnotatedImageSink(Sink):
    """``images/``: each input drawn with its boxes, at its place among the inputs (``images/v1/a.png.jpg``, video
    frames ``images/v1/cam.mp4_000012.jpg``); needs results carrying their pixels (Detector(return_images=True))."""

    def __init__(self, out_dir: Path, names: OutputNames | None = None):
        self.dir = out_dir / "images"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.names = names or OutputNames()
        self.written: list[str] = []

    def write(self, result: Result) -> None:
        if isinstance(result, ErrorRecord) or result.image is None:
            return
        rel = self.names.relative(result.source.path)
        if result.source.frame is not None:
            rel = f"{rel}_{result.source.frame:06d}.jpg"
        elif not rel.lower().endswith((".jpg", ".jpeg")):
            rel = f"{rel}.jpg"
        path = self.dir / self.names.claim(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        draw_detections(result.image, result).save(path, quality=90)
        self.written.append(str(path))

    def close(self) -> list[str]:
        return [str(self.dir)]


@register_sink("video")
class AnnotatedVideoSink(Sink):
    """``videos/``: the frames of each video input drawn with their boxes, at its place among the inputs
    (``videos/v1/cam.mp4``); needs return_images=True. A change of frame size starts a new part
    (``cam_part2.mp4``), so every frame is kept whole."""

    def __init__(self, out_dir: Path, names: OutputNames | None = None, fps: int = 25):
        self.dir = out_dir / "videos"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.names = names or OutputNames()
        self.fps = fps
        self._open: dict[str, list] = {}  # input -> [container, stream, path, base name, part]
        self._done: list[str] = []

    def write(self, result: Result) -> None:
        if isinstance(result, ErrorRecord) or result.image is None or result.source.frame is None:
            return
        self.write_frame(result.source.path, result.image, result)

    def write_frame(self, key: str, image: np.ndarray, det: Detections) -> str | None:
        """Draw ``det`` on ``image`` into the video of ``key`` (an input path, or a stream's name); returns the new
        file's path when this frame started one (the first, or a new frame size)."""
        import av

        h, w = image.shape[:2]
        entry = self._open.get(key)
        started = None
        if entry is not None and (entry[1].height, entry[1].width) != (h - h % 2, w - w % 2):
            self._finish(entry)
            entry = self._open[key] = self._start(key, h, w, entry[3], entry[4] + 1)
            started = str(entry[2])
        elif entry is None:
            rel = self.names.relative(key)
            base = self.names.claim(rel if rel.lower().endswith(".mp4") else f"{rel}.mp4")
            entry = self._open[key] = self._start(key, h, w, base, 1)
            started = str(entry[2])
        container, stream = entry[0], entry[1]
        frame = np.asarray(draw_detections(image, det))[: stream.height, : stream.width]
        for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
            container.mux(packet)
        return started

    def _start(self, key: str, h: int, w: int, base: str, part: int) -> list:
        import av

        name = base if part == 1 else self.names.claim(f"{base[:-4]}_part{part}.mp4")
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        container = av.open(str(path), "w")
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=self.fps)
        stream.width, stream.height, stream.pix_fmt = w - w % 2, h - h % 2, "yuv420p"
        return [container, stream, path, base, part]

    def _finish(self, entry: list) -> None:
        container, stream, path = entry[:3]
        for packet in stream.encode():
            container.mux(packet)
        container.close()
        self._done.append(str(path))

    def close(self) -> list[str]:
        for entry in self._open.values():
            self._finish(entry)
        self._open.clear()
        paths, self._done = self._done, []
        return paths
