"""Profiling: stage timeline, kernel launches, GPU counters, roofline, batch sweep, findings (``profile()``)."""

from yolotune.profile.run import PRESETS, profile

__all__ = ["PRESETS", "profile"]
