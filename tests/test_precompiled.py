"""torch.compile ahead of time on the CPU: compiled once per batch group, saved, loaded by a new runner without
compiling, results equal to eager; what happens when it cannot be used."""

import pytest
import torch

from yolotune.engine import precompiled
from yolotune.engine.precompiled import SUFFIX, PrecompiledRunner, PrecompileUnsupported
from yolotune.engine.tracing import traceable_heads


class Head(torch.nn.Module):
    """Like Ultralytics' Detect: caches anchors per whole input shape, strides as a tensor used in torch.full."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.dynamic, self.shape, self.anchors, self.strides = False, None, None, None
        self.stride = torch.tensor([8.0])

    def forward(self, x):
        if self.dynamic or self.shape != x.shape:
            self.anchors = torch.arange(x.shape[-1], dtype=x.dtype)
            self.strides = torch.full((x.shape[-1],), self.stride[0], dtype=x.dtype)
            self.shape = x.shape
        return torch.nn.functional.silu(self.conv(x)) * self.strides + self.anchors


def _runner(tmp_path, monkeypatch) -> tuple[PrecompiledRunner, Head]:
    monkeypatch.setenv("YOLOTUNE_ENGINE_CACHE", str(tmp_path))
    torch.manual_seed(0)
    model = Head().eval()
    return PrecompiledRunner(model), model


def test_compiled_once_per_batch_group_then_loaded_by_a_new_runner(tmp_path, monkeypatch):
    first, model = _runner(tmp_path, monkeypatch)
    eager = Head().eval()
    eager.load_state_dict(model.state_dict())
    with torch.inference_mode():
        for b in (3, 5, 1):  # 3 builds the function for every batch size but 1, 5 reuses it, 1 has its own
            x = torch.rand(b, 3, 16, 16)
            torch.testing.assert_close(first(x), eager(x), rtol=1e-4, atol=1e-4)
    assert [(r["file"].split("-")[1:], r["built"]) for r in first.loads] == [
        (["untuned", "inference", "00", f"bN{SUFFIX}"], True), (["untuned", "inference", "01", f"b1{SUFFIX}"], True)]
    (why,) = first.loads[1]["others_rejected_because"]  # batch 1 is outside the first function's guards, in words
    assert "unknown" not in why and why, why
    assert len(list(tmp_path.glob(f"*{SUFFIX}"))) == 2 and not list(tmp_path.glob(".*"))  # nothing half-written

    again = PrecompiledRunner(model)  # a new process would find the same files
    with torch.inference_mode():
        for b in (1, 4):
            x = torch.rand(b, 3, 16, 16)
            torch.testing.assert_close(again(x), eager(x), rtol=1e-4, atol=1e-4)
    assert [r["built"] for r in again.loads] == [False, False]
    with torch.inference_mode(False):  # a normal tensor (the Detector's buffers) is another function
        x = torch.rand(2, 3, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(again(x), eager(x), rtol=1e-4, atol=1e-4)
    assert again.loads[-1]["built"] is True and "-normal-00-bN" in again.loads[-1]["file"]


def test_batch_1_first_is_specialised_and_a_larger_batch_compiles_its_own(tmp_path, monkeypatch):
    runner, _ = _runner(tmp_path, monkeypatch)
    with torch.inference_mode():
        runner(torch.rand(1, 3, 16, 16))
        runner(torch.rand(4, 3, 16, 16))
        runner(torch.rand(1, 3, 16, 16))
    assert [r["file"].rsplit("-", 2)[1:] for r in runner.loads] == [["00", f"b1{SUFFIX}"], ["01", f"bN{SUFFIX}"]]


def test_an_unreadable_saved_function_is_reported_and_compiled_again(tmp_path, monkeypatch):
    runner, model = _runner(tmp_path, monkeypatch)
    x = torch.rand(2, 3, 16, 16)
    with torch.inference_mode():
        runner(x)
    (saved,) = tmp_path.glob(f"*{SUFFIX}")
    saved.write_bytes(b"from another torch")
    again = PrecompiledRunner(model)
    with torch.inference_mode():
        again(x)
    assert "error" in again.loads[0] and again.loads[1]["built"] is True


def test_without_the_api_the_engine_compiles_in_process(monkeypatch):
    """An older torch: the engine says why and keeps the JIT compile (built lazily, at the first batch)."""
    from yolotune import Detector

    monkeypatch.setattr(precompiled, "supported", lambda: "torch 2.4 has no torch.compiler.load_compiled_function")
    det = Detector("default", device="cpu", compile="inductor", batch=2)
    assert det.engine.precompiled is None and det.engine.compiled is None
    assert "load_compiled_function" in det.describe()["ahead_of_time_error"]
    with pytest.raises(PrecompileUnsupported):
        PrecompiledRunner(torch.nn.Conv2d(3, 3, 1))


def test_traceable_heads_are_put_back():
    head = Head()
    with traceable_heads(head):
        assert head.dynamic is True and head.stride == [8.0]
    assert head.dynamic is False and isinstance(head.stride, torch.Tensor)


def test_the_detectors_model_inputs_are_one_kind_of_tensor_whichever_path_makes_them(tmp_path):
    """predict's producer runs in inference mode, serve's set-up does not: the model-input buffers they make must
    be the same kind of tensor (normal), or a compiled engine needs a second function for the other kind."""
    import numpy as np

    from yolotune import Detector
    from yolotune.pipeline.buffers import Slot

    slot = Slot(4, 10, torch.device("cpu"), torch.float32, False)
    with torch.inference_mode():
        x = slot.input((64, 64))
        x[:2].fill_(1.0)  # written in inference mode, as letterbox does
    assert not x.is_inference() and not x[:2].is_inference() and float(x[:2].mean()) == 1.0
    with Detector("default", device="cpu", batch=2, imgsz=160) as det:
        det.detect([np.zeros((90, 160, 3), np.uint8)] * 2)  # in inference mode
        slots = [det.direct_slot, *det.slots]
        assert [t.is_inference() for s in slots for t in s.inputs.values()] == [False] * sum(len(s.inputs) for s in slots)


def test_a_function_compiled_with_another_cpu_thread_count_is_still_loaded(tmp_path, monkeypatch):
    """dynamo guards on torch's CPU thread count; a library or the application may set it otherwise in the process
    that loads the artifact. Only that differing must not cost a new compile."""
    runner, model = _runner(tmp_path, monkeypatch)
    x = torch.rand(2, 3, 16, 16)
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    try:
        with torch.inference_mode():
            want = runner(x)
        (saved,) = tmp_path.glob(f"*{SUFFIX}")
        assert '"torch_threads": %d' % before in saved.with_name(saved.name + ".json").read_text()
        torch.set_num_threads(other)
        again = PrecompiledRunner(model)
        with torch.inference_mode():
            torch.testing.assert_close(again(x), want)
            torch.testing.assert_close(again(x), want)  # the memoised call, its own guard check off
        assert [r["built"] for r in again.loads] == [False]
        assert torch.get_num_threads() == other  # the check put it back
    finally:
        torch.set_num_threads(before)


def test_preload_loads_the_saved_function_in_the_background_and_the_first_call_uses_it(tmp_path, monkeypatch):
    """engine.warm_start: a new process starts loading the saved function at Detector() time, in another thread,
    while it autotunes convolutions; the first call then waits for that load instead of loading again."""
    runner, model = _runner(tmp_path, monkeypatch)
    with torch.inference_mode(False):  # normal tensors, as the Detector's buffers
        x = torch.rand(4, 3, 16, 16)
    assert runner.preload(x) is False  # nothing saved yet: a first compile has nothing to overlap
    with torch.inference_mode():  # as the engine calls it
        want = runner(x)
    again = PrecompiledRunner(model)
    threads = []
    real_thread = precompiled.threading.Thread
    monkeypatch.setattr(precompiled.threading, "Thread", lambda **kw: threads.append(real_thread(**kw)) or threads[-1])
    assert again.preload(x) is True and len(threads) == 1
    assert again.preload(x) is False  # already loading
    threads[0].join()
    assert [r["built"] for r in again.loads] == [False]  # loaded before any call
    with torch.inference_mode():
        torch.testing.assert_close(again(x[:2]), want[:2])  # another batch size of the same group
    assert [r["built"] for r in again.loads] == [False] and not again._loading


def test_warm_start_is_off_where_nothing_can_overlap(tmp_path, monkeypatch):
    """The CPU, an eager engine, or no saved function: Detector() does no warm-up work."""
    from yolotune import Detector

    monkeypatch.setenv("YOLOTUNE_ENGINE_CACHE", str(tmp_path))
    assert Detector("default", device="cpu", batch=2, imgsz=64).warm_started is False
    det = Detector("default", device="cpu", compile="inductor", batch=2, imgsz=64)
    assert det.warm_started is False and det.engine.precompiled is not None
