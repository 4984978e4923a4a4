"""What Ultralytics' detection heads need before a whole-graph tracer (torch.export, torch.compile's ahead-of-time
capture) can take them with a dynamic batch dimension.

The Detect head caches its anchors per input shape and compares the whole shape, batch included: a guard that
pins the batch size. Its ``dynamic`` flag recomputes the anchors from the (static) feature-map sizes instead, as
Ultralytics' own exporter does. Its strides are a tensor, and ``torch.full(..., stride[i])`` turns each into a
data-dependent scalar the ahead-of-time capture cannot keep; as Python floats they are constants.
"""

from __future__ import annotations

import contextlib

import torch

_CACHED = ("dynamic", "shape", "anchors", "strides", "stride")


def detection_heads(module: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in module.modules() if hasattr(m, "dynamic") and hasattr(m, "shape") and hasattr(m, "anchors")]


def make_heads_traceable(module: torch.nn.Module) -> None:
    """Anchors recomputed from the feature maps' static sizes on every call, strides as constants. The outputs do
    not change; eager calls recompute a few small tensors they used to cache."""
    for head in detection_heads(module):
        head.dynamic = True
        stride = getattr(head, "stride", None)
        if isinstance(stride, torch.Tensor):
            head.stride = [float(s) for s in stride.tolist()]


@contextlib.contextmanager
def traceable_heads(module: torch.nn.Module):
    """``make_heads_traceable`` for the duration, then every cached attribute put back (tracing also assigns
    traced tensors to the anchor caches)."""
    heads = detection_heads(module)
    saved = [{k: getattr(m, k) for k in _CACHED if hasattr(m, k)} for m in heads]
    try:
        make_heads_traceable(module)
        yield module
    finally:
        for m, attrs in zip(heads, saved):
            for k, v in attrs.items():
                setattr(m, k, v)
