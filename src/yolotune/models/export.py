"""Export a loaded PyTorch detection model to ONNX, with Ultralytics-style metadata (names, stride, imgsz, task)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from yolotune.models.spec import LoadedModel


def export_onnx(model: LoadedModel, path: str | Path, imgsz: tuple[int, int] | None = None, dynamic_batch: bool = True,
                opset: int = 17) -> Path:
    """Write ``model`` (a PyTorch model from the Ultralytics loader) as ONNX; the output layout stays the model's
    own ([B, 4+nc, N] raw, or [B, max_det, 6] for an end-to-end head)."""
    import onnx

    net = model.runnable
    inner = getattr(net, "model", net)
    if hasattr(inner, "fuse"):
        inner.fuse(verbose=False)
    net = net.float().cpu().eval()
    h, w = imgsz or model.spec.imgsz
    dummy = torch.zeros(1, 3, h, w)
    axes = {"images": {0: "batch"}, "output0": {0: "batch"}} if dynamic_batch else None
    path = Path(path)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript exporter (needs no onnxscript): deprecation and tracer notes
        torch.onnx.export(net, dummy, str(path), dynamo=False, opset_version=opset, input_names=["images"],
                          output_names=["output0"], dynamic_axes=axes)
    proto = onnx.load(str(path))
    meta = {
        "author": "yolotune",
        "task": "detect",
        "names": str(model.spec.names),
        "stride": str(model.spec.stride),
        "imgsz": str([h, w]),
        "end2end": str(model.spec.layout == "end2end"),
        "batch": "dynamic" if dynamic_batch else "1",
    }
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(proto, str(path))
    return path
