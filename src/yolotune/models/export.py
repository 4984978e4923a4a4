"""Export a loaded PyTorch detection model to ONNX, with Ultralytics-style metadata (names, stride, imgsz, task).

Two layouts: the model's own raw output ([B, 4+nc, N]), or end to end ([B, max_det, 6]: xyxy, score, class), where the
graph also holds box decoding and per-class NMS (ONNX NonMaxSuppression), so any ONNX runtime returns final boxes.
"""

from __future__ import annotations

import contextlib
import types
import warnings
from pathlib import Path

import torch
from torchvision.ops import nms  # imported here: importing it while the tracer runs fails

from yolotune.models.spec import LoadedModel


class _NonMaxSuppression(torch.autograd.Function):
    """ONNX NonMaxSuppression (per batch and class): [M, 3] rows of (batch, class, box index).

    The eager forward only has to give the tracer a tensor of the right kind; the exported graph holds the ONNX op.
    """

    @staticmethod
    def forward(ctx, boxes, scores, max_per_class: int, iou: float, score_floor: float):  # noqa: ARG004
        rows = []
        for b in range(boxes.shape[0]):
            for c in range(scores.shape[1]):
                ok = (scores[b, c] > score_floor).nonzero().flatten()
                keep = ok[nms(boxes[b, ok], scores[b, c, ok], iou)][:max_per_class]
                rows.append(torch.stack((torch.full_like(keep, b), torch.full_like(keep, c), keep), dim=1))
        return torch.cat(rows) if rows else torch.zeros(0, 3, dtype=torch.int64)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class: int, iou: float, score_floor: float):
        const = lambda v, dtype: g.op("Constant", value_t=torch.tensor([v], dtype=dtype))  # noqa: E731
        return g.op("NonMaxSuppression", boxes, scores, const(max_per_class, torch.int64), const(iou, torch.float32),
                    const(score_floor, torch.float32), center_point_box_i=0)


class EndToEnd(torch.nn.Module):
    """Raw v8 head [B, 4+nc, N] -> [B, max_det, 6] after per-class NMS, best class per box, rows past the count zero."""

    def __init__(self, net: torch.nn.Module, max_det: int = 300, iou: float = 0.7, score_floor: float = 0.001):
        super().__init__()
        self.net, self.max_det, self.iou, self.score_floor = net, max_det, iou, score_floor

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        raw = self.net(images)
        raw = raw[0] if isinstance(raw, (tuple, list)) else raw
        xywh, cls_scores = raw[:, :4].transpose(1, 2), raw[:, 4:]
        boxes = torch.cat((xywh[..., :2] - xywh[..., 2:] / 2, xywh[..., :2] + xywh[..., 2:] / 2), dim=-1)
        best = cls_scores.max(dim=1, keepdim=True)[0]
        # Only each box's best class competes (single-label, as the PyTorch pipeline does): the others score 0,
        # below the floor, so NMS per class needs no coordinate offsets.
        scores = cls_scores * (cls_scores >= best)
        sel = _NonMaxSuppression.apply(boxes, scores, self.max_det, self.iou, self.score_floor)
        b, c, i = sel[:, 0], sel[:, 1], sel[:, 2]
        sel_scores = scores[b, c, i]
        # Sort by (image, score descending); the rank within the image is its row in the padded output.
        order = torch.argsort(b.to(torch.float32) * 2.0 - sel_scores)
        b, c, i, sel_scores = b[order], c[order], i[order], sel_scores[order]
        one_hot = (b[:, None] == torch.arange(images.shape[0], device=b.device)[None, :]).to(torch.int64)
        rank = (one_hot.cumsum(0) * one_hot).sum(1) - 1
        keep = rank < self.max_det
        b, c, i, sel_scores, rank = b[keep], c[keep], i[keep], sel_scores[keep], rank[keep]
        rows = torch.cat((boxes[b, i], sel_scores[:, None], c[:, None].to(boxes.dtype)), dim=1)
        out = torch.zeros(images.shape[0], self.max_det, 6, dtype=boxes.dtype, device=boxes.device)
        return out.index_put((b, rank), rows)


def _dfl_last_axis(self, x: torch.Tensor) -> torch.Tensor:
    """DFL (expected box side over ``c1`` bins) with the softmax on the last axis and the expectation as a MatMul.

    Same result as Ultralytics' softmax over axis 1 + 1x1 convolution; ONNX Runtime's CPU Softmax is ~8x slower
    on a non-last axis (measured 3.0 vs 0.36 ms for yolov8n's [1, 64, 8400] on 2 cores, ~13% of the model).
    """
    b, _, a = x.shape
    bins = self.conv.weight.reshape(self.c1, 1).to(x.dtype)
    return (x.view(b, 4, self.c1, a).transpose(2, 3).softmax(-1) @ bins).view(b, 4, a)


@contextlib.contextmanager
def _export_friendly(net: torch.nn.Module):
    """Temporarily swap forwards for ones that export to simpler graphs with the same result: DFL as above, and C2f's
    ``chunk`` as a constant ``split`` (as Ultralytics' exporter does), which removes a Shape/Slice chain per block
    that would otherwise stay in float between quantized convolutions."""
    patched = []
    for m in net.modules():
        if type(m).__name__ == "DFL" and hasattr(m, "c1") and hasattr(m, "conv"):
            m.forward = types.MethodType(_dfl_last_axis, m)
            patched.append(m)
        elif hasattr(type(m), "forward_split"):
            m.forward = m.forward_split
            patched.append(m)
    try:
        yield
    finally:
        for m in patched:
            del m.forward  # back to the class's own forward


def export_onnx(model: LoadedModel, path: str | Path, imgsz: tuple[int, int] | None = None, dynamic_batch: bool = True,
                opset: int = 17, end2end: bool = False, max_det: int = 300, iou: float = 0.7) -> Path:
    """Write ``model`` (a PyTorch model from the Ultralytics loader) as ONNX.

    The output layout stays the model's own ([B, 4+nc, N] raw, or [B, max_det, 6] for an NMS-free head) unless
    ``end2end``: then a raw v8 head gets box decoding and NMS (``iou``, ``max_det``) inside the graph.
    """
    import onnx

    net = model.runnable
    inner = getattr(net, "model", net)
    if hasattr(inner, "fuse"):
        inner.fuse(verbose=False)
    net = net.float().cpu().eval()
    is_end2end = model.spec.layout == "end2end"
    if end2end and not is_end2end:
        if model.spec.layout != "v8":
            raise ValueError(f"end-to-end export needs a v8-layout head, this model's is {model.spec.layout!r}")
        net = EndToEnd(net, max_det=max_det, iou=iou)
    h, w = imgsz or model.spec.imgsz
    dummy = torch.zeros(1, 3, h, w)
    axes = {"images": {0: "batch"}, "output0": {0: "batch"}} if dynamic_batch else None
    path = Path(path)
    with torch.inference_mode(), warnings.catch_warnings(), _export_friendly(net):
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
        "end2end": str(is_end2end or end2end),
        "batch": "dynamic" if dynamic_batch else "1",
    }
    if end2end and not is_end2end:
        meta.update(nms="True", iou=str(iou), max_det=str(max_det))
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(proto, str(path))
    return path
