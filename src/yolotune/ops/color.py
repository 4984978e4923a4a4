"""Colour conversion on the device: decoders' native YUV 4:2:0 frames to RGB.

Moving YUV 4:2:0 instead of RGB halves the bytes per frame between decoder, host memory and GPU, and takes FFmpeg's
RGB conversion (swscale, more than half of a 720p stream's CPU decode time on our measurements) off the CPU. CPU
decoders hand over I420 (three planes); NVDEC decodes into NV12 (a luma plane, then one plane of U, V pairs).
"""

from __future__ import annotations

import numpy as np
import torch


def is_i420(frame) -> bool:
    """A [h * 3 / 2, w] uint8 array or tensor: PyAV's ``to_ndarray(format="yuv420p")`` layout (Y, then U, then V)."""
    return getattr(frame, "ndim", 0) == 2 and frame.dtype in (np.uint8, torch.uint8) and frame.shape[0] % 3 == 0


def i420_to_rgb(planes: torch.Tensor) -> torch.Tensor:
    """[B, 3h/2, w] uint8 I420 -> [B, 3, h, w] uint8 RGB: BT.601 limited range with nearest chroma, FFmpeg's default
    conversion for untagged video (measured within 3 levels of swscale's, mean 1)."""
    b, rows, w = planes.shape
    h = rows * 2 // 3
    u = planes[:, h : h + h // 4].reshape(b, h // 2, w // 2)
    v = planes[:, h + h // 4 :].reshape(b, h // 2, w // 2)
    return yuv420_to_rgb(planes[:, :h], u, v)


def nv12_to_rgb(planes: torch.Tensor) -> torch.Tensor:
    """[B, 3h/2, w] uint8 NV12 (Y rows, then h/2 rows of interleaved U, V) -> [B, 3, h, w] uint8 RGB, converted as
    ``i420_to_rgb`` converts (the same pixels in I420 give the same RGB)."""
    b, rows, w = planes.shape
    h = rows * 2 // 3
    uv = planes[:, h:].reshape(b, h // 2, w // 2, 2)
    return yuv420_to_rgb(planes[:, :h], uv[..., 0], uv[..., 1])


def i420_to_nv12(planes: torch.Tensor) -> torch.Tensor:
    """[B, 3h/2, w] I420 -> the same pixels as NV12 (what NVDEC hands over): the reference the tests convert with."""
    b, rows, w = planes.shape
    h = rows * 2 // 3
    u = planes[:, h : h + h // 4].reshape(b, h // 2, w // 2)
    v = planes[:, h + h // 4 :].reshape(b, h // 2, w // 2)
    return torch.cat((planes[:, :h], torch.stack((u, v), dim=-1).reshape(b, h // 2, w)), dim=1)


def yuv420_to_rgb(y: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Luma [B, h, w] and chroma [B, h/2, w/2] planes (uint8, any strides) -> [B, 3, h, w] uint8 RGB (BT.601,
    limited range, nearest chroma)."""
    u = u.float().repeat_interleave(2, 1).repeat_interleave(2, 2) - 128.0
    v = v.float().repeat_interleave(2, 1).repeat_interleave(2, 2) - 128.0
    y = (y.float() - 16.0) * 1.164
    rgb = torch.stack((y + 1.596 * v, y - 0.392 * u - 0.813 * v, y + 2.017 * u), dim=1)
    return rgb.clamp_(0, 255).round_().to(torch.uint8)
