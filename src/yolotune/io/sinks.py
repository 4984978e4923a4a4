"""Where results go: JSONL (one record per input), COCO results JSON, annotated images. Registered by name."""

from __future__ import annotations

import colorsys
import json
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable

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


_SINKS: dict[str, Callable[[Path], Sink]] = {}


def register_sink(name: str):
    def wrap(cls):
        cls.name = name
        _SINKS[name] = cls
        return cls

    return wrap


def sink_names() -> list[str]:
    return sorted(_SINKS)


def make_sink(name: str, out_dir: Path) -> Sink:
    if name not in _SINKS:
        raise ValueError(f"unknown output format {name!r}; choose from {', '.join(sink_names())}")
    return _SINKS[name](out_dir)


@register_sink("jsonl")
class JsonlSink(Sink):
    """``detections.jsonl``: one JSON object per input, detections or ``{"ok": false, "error": ...}``."""

    def __init__(self, out_dir: Path):
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

    def __init__(self, out_dir: Path):
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
    width = max(1, round(min(im.size) / 300))
    for box, score, cls, name in zip(det.boxes, det.scores, det.class_ids, det.class_names):
        color = class_color(int(cls))
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle([x1, y1, x2, y2], outline=color, width=width)
        label = f"{name} {score:.2f}"
        tx, ty = x1, max(0.0, y1 - 11)
        tb = draw.textbbox((tx, ty), label)
        draw.rectangle(tb, fill=color)
        draw.text((tx, ty), label, fill=(0, 0, 0))
    return im


@register_sink("images")
class AnnotatedImageSink(Sink):
    """``images/``: each input drawn with its boxes (needs results carrying their pixels: Detector(return_images=True))."""

    def __init__(self, out_dir: Path):
        self.dir = out_dir / "images"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.written: list[str] = []
        self._used: set[str] = set()

    def write(self, result: Result) -> None:
        if isinstance(result, ErrorRecord) or result.image is None:
            return
        stem = re.sub(r"[^\w.-]+", "_", Path(result.source.path).stem, flags=re.UNICODE)
        name = stem if result.source.frame is None else f"{stem}_{result.source.frame:06d}"
        base, k = name, 1
        while name in self._used:  # two inputs with the same stem from different folders
            k += 1
            name = f"{base}_{k}"
        self._used.add(name)
        path = self.dir / f"{name}.jpg"
        draw_detections(result.image, result).save(path, quality=90)
        self.written.append(str(path))

    def close(self) -> list[str]:
        return [str(self.dir)]


@register_sink("video")
class AnnotatedVideoSink(Sink):
    """``videos/<stem>.mp4``: the frames of each video input drawn with their boxes (needs return_images=True)."""

    def __init__(self, out_dir: Path, fps: int = 25):
        self.dir = out_dir / "videos"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.fps = fps
        self._open: dict[str, tuple] = {}

    def write(self, result: Result) -> None:
        if isinstance(result, ErrorRecord) or result.image is None or result.source.frame is None:
            return
        import av

        entry = self._open.get(result.source.path)
        if entry is None:
            path = self.dir / f"{Path(result.source.path).stem}.mp4"
            container = av.open(str(path), "w")
            stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=self.fps)
            h, w = result.image_size
            stream.width, stream.height, stream.pix_fmt = w - w % 2, h - h % 2, "yuv420p"
            entry = self._open[result.source.path] = (container, stream, path)
        container, stream, _ = entry
        frame = np.asarray(draw_detections(result.image, result))[: stream.height, : stream.width]
        for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
            container.mux(packet)

    def close(self) -> list[str]:
        paths = []
        for container, stream, path in self._open.values():
            for packet in stream.encode():
                container.mux(packet)
            container.close()
            paths.append(str(path))
        self._open.clear()
        return paths
