"""The model split into backbone / neck / head from its own structure, run section by section.

Ultralytics models say where the backbone ends (the YAML's ``backbone`` list); the head is the detection module
(anything with the Detect interface: ``nl`` levels and ``stride``); the neck is what lies between. Running the layers
the way Ultralytics' ``_predict_once`` does lets each section (and each layer) be timed on its own, eagerly or as
one CUDA graph per section.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from yolotune.capture_guard import CAPTURE_GUARD

SECTIONS = ("backbone", "neck", "head")


@dataclass
class LayerInfo:
    """One layer of the model: where it sits, what it computes, and (after a measuring pass) its cost."""

    index: int
    type: str
    section: str
    source: list[int]
    params: int
    out_shape: list[int] = field(default_factory=list)
    flops: float = 0.0  # multiply-adds x 2 of its convolutions / matmuls
    bytes: float = 0.0  # tensors read and written by its leaf modules (eager kernels), weights included
    ms: float = 0.0  # measured time per batch (eager, CUDA events or host clock)

    def to_dict(self) -> dict:
        return dict(vars(self))


def detection_model(engine) -> torch.nn.Module | None:
    """The Ultralytics DetectionModel inside a PyTorch engine, or None (ONNX Runtime and other engines)."""
    module = getattr(engine, "module", None)
    inner = getattr(module, "model", None)
    layers = getattr(inner, "model", None)
    if isinstance(layers, torch.nn.Sequential) and hasattr(inner, "save"):
        return inner
    return None


def _is_head(layer: torch.nn.Module) -> bool:
    return hasattr(layer, "nl") and hasattr(layer, "stride") and hasattr(layer, "no")


def describe_layers(model: torch.nn.Module) -> list[LayerInfo]:
    """Layer list with sections assigned from the model's YAML and its Detect module."""
    yaml = getattr(model, "yaml", None) or {}
    n_backbone = len(yaml.get("backbone", [])) or None
    layers = list(model.model)
    infos = []
    for i, layer in enumerate(layers):
        if _is_head(layer):
            section = "head"
        elif n_backbone is not None and i < n_backbone:
            section = "backbone"
        elif n_backbone is None and i < len(layers) // 2:  # no YAML: halves, flagged in the name
            section = "backbone"
        else:
            section = "neck"
        src = layer.f if isinstance(layer.f, list) else [layer.f]
        infos.append(LayerInfo(i, type(layer).__name__, section, [int(s) for s in src], sum(p.numel() for p in layer.parameters())))
    return infos


def section_ranges(infos: list[LayerInfo]) -> dict[str, tuple[int, int]]:
    """Contiguous [start, end) layer ranges per section, in model order."""
    ranges: dict[str, tuple[int, int]] = {}
    for info in infos:
        start, _ = ranges.get(info.section, (info.index, info.index))
        ranges[info.section] = (start, info.index + 1)
    return ranges


class SectionRunner:
    """Runs a DetectionModel's layers section by section: ``run(x)`` equals ``model(x)``'s first output."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.layers = list(model.model)
        self.save = set(model.save)
        self.infos = describe_layers(model)
        self.ranges = section_ranges(self.infos)
        self._graphs: dict[str, tuple[torch.cuda.CUDAGraph, tuple]] = {}

    def run_section(self, name: str, x, saved: list) -> tuple[object, list]:
        """Layers of one section from state (x, saved outputs); returns the new state."""
        start, end = self.ranges[name]
        saved = list(saved)
        for layer in self.layers[start:end]:
            x = self._step(layer, x, saved)
        return x, saved

    def _step(self, layer, x, saved):
        if layer.f != -1:
            x = saved[layer.f] if isinstance(layer.f, int) else [x if j == -1 else saved[j] for j in layer.f]
        x = layer(x)
        saved.append(x if layer.i in self.save else None)
        return x

    @staticmethod
    def head_output(x) -> torch.Tensor:
        return x[0] if isinstance(x, (tuple, list)) else x

    @torch.inference_mode()
    def run(self, x: torch.Tensor) -> torch.Tensor:
        state = (x, [])
        for name in self.ranges:
            state = self.run_section(name, *state)
        return self.head_output(state[0])

    # ------------------------------------------------------------------------------ graph per section
    @torch.inference_mode()
    def capture(self, x: torch.Tensor) -> None:
        """One CUDA graph per section for this static input; ``replay_section`` then runs them in order."""
        self._graphs.clear()
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self.run(x)
        torch.cuda.current_stream(x.device).wait_stream(side)
        state = (x, [])
        for name in self.ranges:
            graph = torch.cuda.CUDAGraph()
            with CAPTURE_GUARD.exclusive(), torch.cuda.graph(graph):
                out = self.run_section(name, *state)
            self._graphs[name] = (graph, out)
            state = out
        # The head caches anchors per input shape and replaces them for another shape; graphs read them by
        # address, so keep this capture's tensors alive with its graphs (as CudaGraphCache does).
        self._keepalive = [v for mod in self.model.modules() for v in vars(mod).values() if isinstance(v, torch.Tensor)]

    def replay_section(self, name: str) -> None:
        self._graphs[name][0].replay()

    def graph_output(self) -> torch.Tensor:
        last = list(self.ranges)[-1]
        return self.head_output(self._graphs[last][1][0])


def measure_layer_costs(runner: SectionRunner, x: torch.Tensor, repeats: int = 5) -> list[LayerInfo]:
    """Per layer: output shape, FLOPs and bytes (from leaf-module shapes), and eager time per batch.

    Times come from CUDA events around each layer on the GPU (eager: they include launch gaps, which is what eager
    costs) or the host clock on the CPU.
    """
    infos = runner.infos
    count_flops_and_bytes(runner, x)
    cuda = x.is_cuda
    totals = [0.0] * len(infos)
    with torch.inference_mode():
        for r in range(repeats + 1):
            x_cur, saved = x, []
            marks = []
            for layer in runner.layers:
                if cuda:
                    ev = torch.cuda.Event(enable_timing=True)
                    ev.record()
                    marks.append(ev)
                else:
                    marks.append(_now())
                x_cur = runner._step(layer, x_cur, saved)
            if cuda:
                end = torch.cuda.Event(enable_timing=True)
                end.record()
                end.synchronize()
                stamps = marks + [end]
                times = [stamps[i].elapsed_time(stamps[i + 1]) for i in range(len(marks))]
            else:
                stamps = marks + [_now()]
                times = [(stamps[i + 1] - stamps[i]) * 1e3 for i in range(len(marks))]
            if r > 0:  # the first pass warms caches and autotuners
                totals = [t + d for t, d in zip(totals, times)]
    for info, total in zip(infos, totals):
        info.ms = total / repeats
    return infos


def _now() -> float:
    import time

    return time.perf_counter()


def count_flops_and_bytes(runner: SectionRunner, x: torch.Tensor) -> None:
    """FLOPs (convolutions, linear) and bytes moved (inputs + outputs + weights of every leaf module) per layer."""
    infos = runner.infos

    def tensors(obj):
        if isinstance(obj, torch.Tensor):
            return [obj]
        if isinstance(obj, (list, tuple)):
            return [t for o in obj for t in tensors(o)]
        if isinstance(obj, dict):
            return [t for o in obj.values() for t in tensors(o)]
        return []

    current: list[LayerInfo] = []  # the layer being run: leaf modules may be shared (Ultralytics' one SiLU)

    def hook(module, inputs, output):
        info = current[0]
        moved = sum(t.numel() * t.element_size() for t in tensors(inputs) + tensors(output))
        moved += sum(p.numel() * p.element_size() for p in module.parameters(recurse=False))
        info.bytes += moved
        if isinstance(module, torch.nn.Conv2d) and isinstance(output, torch.Tensor):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            info.flops += 2.0 * output.numel() * k
        elif isinstance(module, torch.nn.Linear) and isinstance(output, torch.Tensor):
            info.flops += 2.0 * output.numel() * module.in_features

    leaves = {id(sub): sub for layer in runner.layers for sub in layer.modules() if not any(True for _ in sub.children())}
    hooks = [sub.register_forward_hook(hook) for sub in leaves.values()]
    for info in infos:
        info.flops = info.bytes = 0.0
    try:
        with torch.inference_mode():
            x_cur, saved = x, []
            for info, layer in zip(infos, runner.layers):
                current[:] = [info]
                x_cur = runner._step(layer, x_cur, saved)
                out = runner.head_output(x_cur) if info.section == "head" else x_cur
                info.out_shape = list(out.shape) if isinstance(out, torch.Tensor) else [list(t.shape) for t in tensors(out)][:1]
    finally:
        for h in hooks:
            h.remove()
