"""DetectorOptions: every setting of a Detector and of its model loader, checked once, to and from JSON.

One object travels where options travel: ``Detector(model, options)``, an artifact's ``yolotune.json`` (written by
``optimize``), the optimizer's candidates and the profiler's presets. Unknown names and bad values fail with the
option's name and what it must be.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from yolotune.ops.nms import NMS_BACKENDS

PRECISION_NAMES = ("fp32", "fp16", "bf16")
COMPILE_MODES = (False, True, "none", "off", "inductor", "jit", "inductor-untuned", "aoti")
DEFAULT_CONF = 0.25  # the confidence threshold detections are kept at unless the caller says otherwise
# options an artifact may not set: it cannot vouch for its own model file, and returning pixels is the caller's call
NOT_SAVED = frozenset({"trust_model", "return_images"})


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _number(lo: float, hi: float) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and lo <= v <= hi


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def _one_of(*values) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, (str, bool)) and v in values


def _imgsz(v) -> bool:
    return _positive_int(v) or (isinstance(v, (list, tuple)) and len(v) == 2 and all(_positive_int(x) for x in v))


def _boolean(v) -> bool:
    return isinstance(v, bool)


def _check(check: Callable[[Any], bool], expected: str):
    return {"check": check, "expected": expected}


@dataclass(frozen=True)
class DetectorOptions:
    """What a Detector runs with. ``None`` means "the Detector's choice" (written out in each field's comment)."""

    device: str = dataclasses.field(default="auto", metadata=_check(lambda v: isinstance(v, str), "a device name"))
    # None: fp16 on CUDA, fp32 on the CPU; half=False asks for fp32 without naming it
    precision: str | None = dataclasses.field(default=None, metadata=_check(
        _optional(_one_of(*PRECISION_NAMES)), "one of fp32, fp16, bf16"))
    half: bool | None = dataclasses.field(default=None, metadata=_check(_optional(_boolean), "true, false or null"))
    batch: int = dataclasses.field(default=16, metadata=_check(_positive_int, "a positive integer"))
    # None: the model's own input size; a rect canvas per same-size batch is cut from it
    imgsz: int | tuple[int, int] | None = dataclasses.field(default=None, metadata=_check(
        _optional(_imgsz), "a positive integer or [height, width]"))
    conf: float = dataclasses.field(default=DEFAULT_CONF, metadata=_check(_number(0, 1), "a number from 0 to 1"))
    iou: float = dataclasses.field(default=0.7, metadata=_check(_number(0, 1), "a number from 0 to 1"))
    max_det: int = dataclasses.field(default=300, metadata=_check(_positive_int, "a positive integer"))
    topk: int = dataclasses.field(default=2048, metadata=_check(_positive_int, "a positive integer"))
    agnostic: bool = dataclasses.field(default=False, metadata=_check(_boolean, "true or false"))
    nms: str = dataclasses.field(default="auto", metadata=_check(_one_of(*NMS_BACKENDS), "one of " + ", ".join(NMS_BACKENDS)))
    # None: rect canvases, except for compiled engines (each canvas is one more compile)
    rect: bool | None = dataclasses.field(default=None, metadata=_check(_optional(_boolean), "true, false or null"))
    cuda_graph: bool = dataclasses.field(default=True, metadata=_check(_boolean, "true or false"))
    compile: bool | str = dataclasses.field(default=False, metadata=_check(
        _one_of(*COMPILE_MODES), "false, true, inductor, inductor-untuned or aoti"))
    fuse: bool = dataclasses.field(default=True, metadata=_check(_boolean, "true or false"))
    # None: leave cuDNN's autotuning as the process has it (engines turn it on)
    cudnn_benchmark: bool | None = dataclasses.field(default=None, metadata=_check(
        _optional(_boolean), "true, false or null"))
    gpu_decode: bool = dataclasses.field(default=True, metadata=_check(_boolean, "true or false"))
    # JPEGs: "hardware" on the GPU's NVJPG engines through nvImageCodec (io/jpeg_hardware.py), split with CUDA
    # nvJPEG; "cuda" CUDA nvJPEG only; "cpu" Pillow; "auto" CUDA nvJPEG on a GPU (the hardware path ran slower end to
    # end: benchmarks/results/jpeg/e2e_jpeg_h200_2026-12-06.jsonl)
    jpeg_decode: str = dataclasses.field(default="auto", metadata=_check(_one_of("auto", "hardware", "cuda", "cpu"),
                                                                          "one of auto, hardware, cuda, cpu"))
    # NVJPG's share of the JPEGs both it and CUDA nvJPEG take; None: by their measured rates (io/jpeg_routing.py)
    hardware_share: float | None = dataclasses.field(default=None, metadata=_check(
        _optional(_number(0, 1)), "a number from 0 to 1, or null"))
    # ONNX models: "openvino" runs them with OpenVINO on the CPU (engine/openvino.py), "auto" with ONNX Runtime
    runtime: str = dataclasses.field(default="auto", metadata=_check(_one_of("auto", "onnxruntime", "openvino"),
                                                                      "one of auto, onnxruntime, openvino"))
    # videos: "nvdec" decodes on the GPU's NVDEC engines (io/nvdec.py), "cpu" with FFmpeg, "auto" NVDEC where there is
    video_decode: str = dataclasses.field(default="auto", metadata=_check(_one_of("auto", "nvdec", "cpu"),
                                                                           "one of auto, nvdec, cpu"))
    preprocess: str = dataclasses.field(default="auto", metadata=_check(_one_of("auto", "gpu", "cpu"),
                                                                         "one of auto, gpu, cpu"))
    workers: int | None = dataclasses.field(default=None, metadata=_check(
        _optional(_positive_int), "a positive integer or null"))
    return_images: bool = dataclasses.field(default=False, metadata=_check(_boolean, "true or false"))
    # None: Pillow's 89.5-megapixel bomb limit; 0: no limit
    max_image_pixels: int | None = dataclasses.field(default=None, metadata=_check(
        _optional(lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0), "a non-negative integer or null"))
    # the model loaders' own options (models/onnx.py, models/ultralytics.py); None: the loader's default
    threads: int | None = dataclasses.field(default=None, metadata=_check(
        _optional(_positive_int), "a positive integer or null"))
    split_batch: bool | None = dataclasses.field(default=None, metadata=_check(_optional(_boolean), "true, false or null"))
    seed: int | None = dataclasses.field(default=None, metadata=_check(
        _optional(lambda v: isinstance(v, int) and not isinstance(v, bool)), "an integer"))
    class_bias: float | None = dataclasses.field(default=None, metadata=_check(
        _optional(_number(-1e6, 1e6)), "a number or null"))
    end2end: bool | None = dataclasses.field(default=None, metadata=_check(_optional(_boolean), "true, false or null"))
    trust_model: bool | None = dataclasses.field(default=None, metadata=_check(_optional(_boolean), "true, false or null"))

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            problem = option_problem(f.name, getattr(self, f.name))
            if problem:
                raise ValueError(f"option {problem}")
        if isinstance(self.imgsz, list):  # JSON has no tuples
            object.__setattr__(self, "imgsz", tuple(self.imgsz))

    # ------------------------------------------------------------------------------------------ conversions
    def replace(self, **changes) -> "DetectorOptions":
        """A copy with ``changes``; unknown names fail like ``from_dict``'s."""
        _unknown(changes)
        return dataclasses.replace(self, **changes)

    def merged(self, changes: dict) -> "DetectorOptions":
        """A copy with the ``changes`` that are not None (a CLI's unset flags stay the options' own)."""
        return self.replace(**{k: v for k, v in changes.items() if v is not None})

    def changed(self) -> dict:
        """The options that differ from the defaults, as JSON values (what an artifact saves)."""
        default = DetectorOptions()
        return {k: v for k, v in self.to_dict().items() if getattr(default, k) != getattr(self, k)}

    def saved(self) -> dict:
        """What an artifact keeps: every option that is set (None leaves the choice to the Detector), so a tuned
        pipeline stays the same when a default changes; not the machine's and the caller's own (device,
        trust_model, return_images)."""
        return {k: v for k, v in self.to_dict().items() if v is not None and k != "device" and k not in NOT_SAVED}

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if isinstance(self.imgsz, tuple):
            d["imgsz"] = list(self.imgsz)
        return d

    @classmethod
    def from_dict(cls, data: dict, saved: bool = False) -> "DetectorOptions":
        """Options from JSON. ``saved``: an artifact's, which may not set ``NOT_SAVED``."""
        if not isinstance(data, dict):
            raise ValueError(f"options must be an object, not {type(data).__name__}")
        _unknown(data, NOT_SAVED if saved else frozenset())
        return cls(**data)

    def model_options(self) -> dict:
        """The options the model loader takes (those set)."""
        return {k: getattr(self, k) for k in LOADER_OPTIONS if getattr(self, k) is not None}


LOADER_OPTIONS = ("threads", "split_batch", "seed", "class_bias", "end2end", "trust_model")
OPTION_NAMES = tuple(f.name for f in dataclasses.fields(DetectorOptions))


def option_problem(name: str, value) -> str | None:
    """What is wrong with ``value`` for the option ``name`` ("batch must be a positive integer, not -5"), or None."""
    f = _FIELDS.get(name)
    if f is None:
        return f"{name!r} is not an option"
    if f.metadata["check"](value):
        return None
    return f"{name} must be {f.metadata['expected']}, not {value!r}"


_FIELDS = {f.name: f for f in dataclasses.fields(DetectorOptions)}


def _unknown(data: dict, refused: frozenset = frozenset()) -> None:
    for key in data:
        if key not in OPTION_NAMES or key in refused:
            known = ", ".join(sorted(set(OPTION_NAMES) - refused))
            raise ValueError(f"unknown option {key!r} (known: {known})")
