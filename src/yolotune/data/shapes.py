"""Ten object classes drawn procedurally with variation (colour, outline, aspect, rotation, texture).

Each class keeps its identity under any rotation and moderate stretching, so labels stay unambiguous.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

CLASS_NAMES = ("circle", "ring", "triangle", "square", "star", "cross", "hexagon", "arrow", "crescent", "pie")


def _regular_polygon(n: int, r: float, c: float, phase: float = 0.0) -> list[tuple[float, float]]:
    return [(c + r * math.cos(phase + 2 * math.pi * k / n), c + r * math.sin(phase + 2 * math.pi * k / n)) for k in range(n)]


def _star(r: float, c: float, inner: float) -> list[tuple[float, float]]:
    pts = []
    for k in range(10):
        rad = r if k % 2 == 0 else r * inner
        a = -math.pi / 2 + math.pi * k / 5
        pts.append((c + rad * math.cos(a), c + rad * math.sin(a)))
    return pts


def _cross(s: float, t: float) -> list[tuple[float, float]]:
    a, b = (s - t) / 2, (s + t) / 2
    return [(a, 0), (b, 0), (b, a), (s, a), (s, b), (b, b), (b, s), (a, s), (a, b), (0, b), (0, a), (a, a)]


def _arrow(s: float, shaft: float, head: float) -> list[tuple[float, float]]:
    m, h = s / 2, s * head
    return [(0, m - shaft / 2), (s - h, m - shaft / 2), (s - h, 0), (s, m), (s - h, s), (s - h, m + shaft / 2), (0, m + shaft / 2)]


def draw_object(class_id: int, size: int, rng: np.random.Generator) -> Image.Image:
    """An RGBA patch about ``size`` pixels across holding one object of ``class_id`` (transparent elsewhere)."""
    s = max(8, int(size))
    pad = 2
    canvas = s + 2 * pad
    mask = Image.new("L", (canvas, canvas), 0)
    d = ImageDraw.Draw(mask)
    c = canvas / 2
    r = s / 2
    name = CLASS_NAMES[class_id]
    if name == "circle":
        d.ellipse([pad, pad, pad + s, pad + s], fill=255)
    elif name == "ring":
        d.ellipse([pad, pad, pad + s, pad + s], fill=255)
        k = r * rng.uniform(0.45, 0.7)
        d.ellipse([c - k, c - k, c + k, c + k], fill=0)
    elif name == "triangle":
        d.polygon(_regular_polygon(3, r, c, -math.pi / 2), fill=255)
    elif name == "square":
        d.rectangle([pad, pad, pad + s, pad + s], fill=255)
    elif name == "star":
        d.polygon(_star(r, c, rng.uniform(0.38, 0.5)), fill=255)
    elif name == "cross":
        d.polygon([(x + pad, y + pad) for x, y in _cross(s, s * rng.uniform(0.28, 0.4))], fill=255)
    elif name == "hexagon":
        d.polygon(_regular_polygon(6, r, c), fill=255)
    elif name == "arrow":
        d.polygon([(x + pad, y + pad) for x, y in _arrow(s, s * rng.uniform(0.25, 0.4), rng.uniform(0.35, 0.5))], fill=255)
    elif name == "crescent":
        d.ellipse([pad, pad, pad + s, pad + s], fill=255)
        off = r * rng.uniform(0.45, 0.7)
        d.ellipse([pad + off, pad - r * 0.1, pad + s + off, pad + s - r * 0.1], fill=0)
    elif name == "pie":
        start = rng.uniform(20, 50)
        d.pieslice([pad, pad, pad + s, pad + s], start, 360 - start, fill=255)
    rgba = _paint(mask, rng)
    rgba = _stretch_and_rotate(rgba, rng)
    return rgba


def _paint(mask: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Fill colour (flat or a two-colour gradient) and an optional darker or lighter outline."""
    w, h = mask.size
    c1 = rng.integers(0, 256, 3)
    if rng.random() < 0.4:
        c2 = rng.integers(0, 256, 3)
        t = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
        fill = (c1 * (1 - t) + c2 * t).repeat(h, axis=0)
    else:
        fill = np.broadcast_to(c1.astype(np.float32), (h, w, 3)).copy()
    m = np.asarray(mask)
    if rng.random() < 0.5:
        width = max(1, int(min(w, h) * rng.uniform(0.03, 0.08)))
        from PIL import ImageFilter

        inner = np.asarray(mask.filter(ImageFilter.MinFilter(2 * width + 1)))
        edge = (m > 0) & (inner == 0)
        fill[edge] = rng.integers(0, 256, 3)
    rgb = np.clip(fill, 0, 255).astype(np.uint8)
    return Image.fromarray(np.dstack([rgb, m]), "RGBA")


def _stretch_and_rotate(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = im.size
    aspect = rng.uniform(0.75, 1.33)
    im = im.resize((max(4, int(w * aspect)), max(4, int(h / aspect))), Image.BILINEAR)
    return im.rotate(rng.uniform(0, 360), resample=Image.BILINEAR, expand=True)
