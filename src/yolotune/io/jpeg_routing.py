"""Which GPU decoder takes which JPEG: the hardware decoders (NVJPG, io/jpeg_hardware.py), CUDA nvJPEG, or Pillow.

A batch's hardware-decodable JPEGs are split between NVJPG and CUDA nvJPEG by their measured rates, so both finish
together (the two run at once: NVJPG off the SMs, nvJPEG on them); ``hardware_share`` fixes the split instead (1.0:
CUDA nvJPEG only for what the hardware refuses). What NVJPG refuses goes to CUDA nvJPEG, what that refuses to Pillow.
"""

from __future__ import annotations

import threading

# the first batch's split, before either decoder has been timed
FIRST_SHARE = 0.5
# how much of each new measurement enters a decoder's rate (a moving average over ~5 batches)
RATE_WEIGHT = 0.2


class RateSplit:
    """The share of a batch's hardware-decodable JPEGs that NVJPG takes: fixed (``share``), or from the measured
    rates of both decoders (images per second of their own calls, running side by side)."""

    def __init__(self, share: float | None = None):
        if share is not None and not 0.0 <= share <= 1.0:
            raise ValueError(f"the hardware share must be from 0 to 1, not {share}")
        self.fixed = share
        self.rates: dict[str, float] = {}  # "hardware", "cuda": images/s
        self._lock = threading.Lock()

    @property
    def share(self) -> float:
        if self.fixed is not None:
            return self.fixed
        hw, cuda = self.rates.get("hardware"), self.rates.get("cuda")
        if hw is None or cuda is None:  # until both have been timed
            return FIRST_SHARE
        return hw / (hw + cuda)

    def measured(self, decoder: str, images: int, seconds: float) -> None:
        """One call of ``decoder`` decoded ``images`` in ``seconds``."""
        if images <= 0 or seconds <= 0:
            return
        rate = images / seconds
        with self._lock:
            old = self.rates.get(decoder)
            self.rates[decoder] = rate if old is None else (1 - RATE_WEIGHT) * old + RATE_WEIGHT * rate

    def split(self, indices: list[int]) -> tuple[list[int], list[int]]:
        """``indices`` of hardware-decodable JPEGs -> (NVJPG's, CUDA nvJPEG's)."""
        k = round(len(indices) * self.share)
        return indices[:k], indices[k:]

    def describe(self) -> dict:
        return {"hardware_share": round(self.share, 3), "fixed": self.fixed is not None,
                "rates_per_s": {k: round(v, 1) for k, v in self.rates.items()}}


def route(headers: list, hardware: bool, cuda: bool) -> tuple[list[int], list[int], list[int]]:
    """Positions of ``headers`` (JpegHeader or None: not a JPEG, or already decoded) -> (hardware-decodable, CUDA
    nvJPEG's own, the rest: Pillow's), for the decoders there are."""
    hw, gpu, cpu = [], [], []
    for i, h in enumerate(headers):
        if h is not None and hardware and h.hardware_decodable:
            hw.append(i)
        elif h is not None and cuda and h.gpu_decodable:
            gpu.append(i)
        else:
            cpu.append(i)
    return hw, gpu, cpu
