"""AOTInductor engine packages on the CPU: built once, cached by key, loaded again, any batch size."""

import pytest
import torch

from yolotune.engine.aoti import AotiRunner, package_key
from yolotune.engine.torch import compile_mode


class Head(torch.nn.Module):
    """Caches a shape-dependent tensor like Ultralytics' Detect (anchors) and guards on the shape."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.dynamic, self.shape, self.anchors = False, None, None

    def forward(self, x):
        if self.dynamic or self.shape != x.shape:
            self.anchors = torch.arange(x.shape[-1], dtype=x.dtype)
            self.shape = x.shape
        return torch.nn.functional.silu(self.conv(x)) + self.anchors


@pytest.mark.slow
def test_package_is_built_once_cached_and_serves_every_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLOTUNE_ENGINE_CACHE", str(tmp_path))
    torch.manual_seed(0)
    model = Head().eval()
    first = AotiRunner(model)
    x = torch.rand(3, 3, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(first(x), model(x), rtol=1e-4, atol=1e-4)
    assert first.last_build["built"] is True and model.dynamic is False  # export's override is undone
    again = AotiRunner(model)
    with torch.inference_mode():
        for b in (1, 5):
            x = torch.rand(b, 3, 16, 16)
            torch.testing.assert_close(again(x), model(x), rtol=1e-4, atol=1e-4)
    assert again.last_build["built"] is False
    key = package_key(model, x)  # nothing half-written left; beside the package, the marker of its load check
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{key}.loads", f"{key}.pt2"]


def test_package_key_changes_with_weights_and_input():
    model = Head().eval()
    x = torch.rand(2, 3, 16, 16)
    key = package_key(model, x)
    assert key == package_key(model, torch.rand(7, 3, 16, 16))  # the batch size is dynamic in the package
    assert key != package_key(model, torch.rand(2, 3, 32, 32))
    assert key != package_key(model, x.half())
    with torch.no_grad():
        model.conv.bias += 1
    assert key != package_key(model, x)
    before = package_key(model, x)
    model.register_buffer("count", torch.tensor(3))  # 0-dim tensors hash too (BatchNorm's counters)
    assert package_key(model, x) != before


def test_compile_option_values():
    assert compile_mode(False) is None and compile_mode("none") is None
    assert compile_mode(True) == "inductor" and compile_mode("aoti") == "aoti"
    with pytest.raises(ValueError, match="compile must be"):
        compile_mode("tensorrt")


def test_a_package_that_does_not_load_is_refused_without_touching_this_process(tmp_path):
    """The load is tried in a child first (on the H100 a CUDA package segfaulted its loader): a broken package
    is an exception here, and no marker says it loads."""
    from yolotune.engine.aoti import check_loads

    bad = tmp_path / "broken.pt2"
    bad.write_bytes(b"not a zip")
    with pytest.raises(RuntimeError, match="does not load.*inductor"):
        check_loads(bad)
    assert not bad.with_suffix(".loads").exists()


def test_compiled_detector_builds_and_keeps_the_square_canvas_unless_asked():
    """torch.compile is lazy: building the Detector checks the compile call itself (its mode / options) and the
    rect default; nothing is compiled until the first batch."""
    from yolotune import Detector

    det = Detector("default", device="cpu", compile="inductor", batch=2)
    assert det.describe()["compile"] == "inductor" and det.rect is False  # each canvas would be one more compile
    assert Detector("default", device="cpu", batch=2).rect is True
    assert Detector("default", device="cpu", batch=2, rect=False).rect is False
    rect = Detector("default", device="cpu", compile="inductor", batch=2, rect=True)
    assert rect.rect is True
    # compiled engines hold at most two canvases: a third shape falls back to the model's square canvas
    assert rect.canvas_for([(720, 1280)]) == (384, 640) and rect.canvas_for([(480, 1280)]) == (256, 640)
    assert rect.canvas_for([(1080, 1440)]) == rect.imgsz and len(rect.canvases) == 2
    # batch 1 would be a second compile: a lone image is padded to 2 (unless the Detector's batch is 1)
    assert det.buckets == [2] and det.bucket(1) == 2
    assert Detector("default", device="cpu", compile="inductor", batch=1).buckets == [1]
    assert Detector("default", device="cpu", batch=4).buckets == [1, 2, 4]


def test_compiled_candidate_tunes_kernels_only_when_the_budget_allows():
    from yolotune.tune.candidates import TUNED_COMPILE_BUDGET_S, search_space

    def compiled(budget):
        return next(c for c in search_space("cuda", budget_s=budget) if c.options.compile)

    assert [c.name for c in search_space("cuda")][:3] == ["eager fp32", "compiled+graph fp16", "graph fp16"]
    assert compiled(120).options.compile == "inductor-untuned" and compiled(120).est_cost_s < 120 - 30
    assert compiled(TUNED_COMPILE_BUDGET_S).options.compile == "inductor"
    assert not any(c.options.compile for c in search_space("cuda", compile=False))
