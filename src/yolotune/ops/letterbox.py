"""Letterbox: aspect-preserving resize + constant padding, batched, on any device.

The geometry follows Ultralytics' ``LetterBox`` (same rounding, same centred padding, fill 114) so boxes and
pixels agree with what a user's Ultralytics pipeline produced.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

PAD_VALUE = 114


@dataclass(frozen=True)
class LetterboxGeometry:
    """How one source image was placed on the model's input canvas."""

    source_hw: tuple[int, int]
    resized_hw: tuple[int, int]  # size after resize, before padding
    top: int
    left: int
    gain: float  # resized / source

    @property
    def gain_xy(self) -> tuple[float, float]:
        """Actual per-axis scale after rounding the resized size (what Ultralytics' scale_boxes divides by)."""
        return self.resized_hw[1] / self.source_hw[1], self.resized_hw[0] / self.source_hw[0]

    @property
    def resized_is_identity(self) -> bool:
        return self.resized_hw == self.source_hw


def letterbox_geometry(source_hw: tuple[int, int], canvas_hw: tuple[int, int], scaleup: bool = True) -> LetterboxGeometry:
    """Placement of an image of ``source_hw`` centred on a ``canvas_hw`` canvas (Ultralytics arithmetic)."""
    h, w = source_hw
    ch, cw = canvas_hw
    r = min(ch / h, cw / w)
    if not scaleup:
        r = min(r, 1.0)
    new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)  # thin images keep >= 1 pixel
    dw, dh = (cw - new_w) / 2, (ch - new_h) / 2
    top, left = int(round(dh - 0.1)), int(round(dw - 0.1))
    return LetterboxGeometry(source_hw=(h, w), resized_hw=(new_h, new_w), top=top, left=left, gain=r)


def canvas_shape(source_hws: list[tuple[int, int]], imgsz: tuple[int, int], stride: int, rect: bool) -> tuple[int, int]:
    """Input canvas (h, w) for a batch.

    ``rect``: when every image in the batch has the same shape, shrink the padding to the next multiple of
    ``stride`` (Ultralytics' ``auto=True``), which is what Ultralytics predict does for PyTorch models and cuts
    the pixels of a 16:9 frame by ~40%. Mixed shapes, or ``rect=False``, use the full ``imgsz`` canvas.
    """
    ch, cw = imgsz
    if not rect or not source_hws or len(set(source_hws)) != 1:
        return ch, cw
    g = letterbox_geometry(source_hws[0], imgsz)
    new_h, new_w = g.resized_hw
    return new_h + (ch - new_h) % stride, new_w + (cw - new_w) % stride


def letterbox_batch(
    images: list[torch.Tensor], out: torch.Tensor, round_pixels: bool = True, backend: str = "auto"
) -> list[LetterboxGeometry]:
    """Letterbox ``images`` (each uint8 [3, h, w], RGB) into ``out[:len(images)]`` scaled to [0, 1].

    ``out`` is a preallocated [B, 3, H, W] float buffer (any dtype or memory format) on the images' device.
    On CUDA, images of the same size are resized together in one call; ``round_pixels`` rounds the resized values
    to integers as OpenCV's uint8 resize does, so inputs match Ultralytics' to within one grey level. On the CPU,
    OpenCV itself does the resize when it is installed (bit-identical to Ultralytics). ``backend`` forces
    "torch" or "opencv" (CPU only).
    """
    canvas = tuple(out.shape[-2:])
    n = len(images)
    scale = 1.0 if out.dtype == torch.uint8 else 1.0 / 255.0  # a uint8 buffer keeps raw pixel values
    out[:n].fill_(PAD_VALUE * scale)
    if backend == "opencv" or (backend == "auto" and out.device.type == "cpu" and _opencv() is not None):
        return _letterbox_with_opencv(images, out, canvas, scale)
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, img in enumerate(images):
        groups[tuple(img.shape[-2:])].append(i)
    geometries: list[LetterboxGeometry | None] = [None] * n
    # Half precision is exact for 0..255 and plenty for interpolated pixels; CPU kernels want float32.
    work_dtype = out.dtype if out.device.type == "cuda" and out.dtype != torch.uint8 else torch.float32
    for hw, idxs in groups.items():
        g = letterbox_geometry(hw, canvas)
        x = images[idxs[0]][None] if len(idxs) == 1 else torch.stack([images[i] for i in idxs])
        x = x.to(work_dtype)
        if not g.resized_is_identity:
            x = F.interpolate(x, size=g.resized_hw, mode="bilinear", align_corners=False)
            if round_pixels:
                x = x.round_()
        if scale != 1.0:
            x = x.mul_(scale)
        nh, nw = g.resized_hw
        region = (slice(g.top, g.top + nh), slice(g.left, g.left + nw))
        if idxs == list(range(idxs[0], idxs[0] + len(idxs))):
            out[idxs[0] : idxs[0] + len(idxs), :, region[0], region[1]] = x
        else:
            index = torch.tensor(idxs, device=out.device)
            out[index, :, region[0], region[1]] = x
        for i in idxs:
            geometries[i] = g
    return geometries  # type: ignore[return-value]


def _opencv():
    try:
        import cv2
    except Exception:  # not installed, or a GUI build without its system libraries
        return None
    return cv2


def _letterbox_with_opencv(
    images: list[torch.Tensor], out: torch.Tensor, canvas: tuple[int, int], scale: float
) -> list[LetterboxGeometry]:
    """CPU path: OpenCV's uint8 bilinear resize is faster than torch's on CPU and is the very function Ultralytics
    uses, so CPU inputs are bit-identical to Ultralytics'."""
    cv2 = _opencv()
    geometries = []
    for i, img in enumerate(images):
        g = letterbox_geometry(tuple(img.shape[-2:]), canvas)
        hwc = np.ascontiguousarray(img.permute(1, 2, 0).numpy())
        if not g.resized_is_identity:
            hwc = cv2.resize(hwc, g.resized_hw[::-1], interpolation=cv2.INTER_LINEAR)
        nh, nw = g.resized_hw
        region = out[i, :, g.top : g.top + nh, g.left : g.left + nw]
        region.copy_(torch.from_numpy(hwc).permute(2, 0, 1))
        if scale != 1.0:
            region.mul_(scale)
        geometries.append(g)
    return geometries


def geometry_tensor(geometries: list[LetterboxGeometry], batch: int, device: torch.device) -> torch.Tensor:
    """Pack geometries as a float32 [batch, 6] tensor: gain x, gain y, left, top, source height, source width.

    Rows past ``len(geometries)`` are identity rows so padded batch slots stay finite.
    """
    rows = [[*g.gain_xy, g.left, g.top, g.source_hw[0], g.source_hw[1]] for g in geometries]
    rows += [[1.0, 1.0, 0.0, 0.0, 1.0, 1.0]] * (batch - len(rows))
    return torch.tensor(rows, dtype=torch.float32).to(device, non_blocking=True)
