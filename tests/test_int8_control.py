"""INT8 that keeps its accuracy: MSE calibration ranges, calibrating once and quantizing many ways, the layer groups
of a YOLO graph, the output error that ranks them, and the search for the fewest groups in float."""

import re

import numpy as np
import onnx
import pytest

from yolotune.tune.int8 import calibrate, calibration_batches, mse_range, quantize_with_ranges
from yolotune.tune.int8_control import accuracy_control, layer_groups, output_error, run_onnx


def test_mse_range_keeps_a_spread_out_tensor_whole():
    x = np.random.default_rng(0).uniform(0, 10, 100_000)
    hist, edges = np.histogram(x, 512, range=(-10, 10))
    lo, hi = mse_range(hist, edges, x.min(), x.max())
    assert lo <= 0 and 9.5 <= hi <= 10.0


def test_mse_range_clips_a_rare_far_outlier():
    x = np.concatenate([np.random.default_rng(1).normal(0, 1, 1_000_000), [50.0]])
    hist, edges = np.histogram(x, 512, range=(-50, 50))
    lo, hi = mse_range(hist, edges, x.min(), x.max())
    assert 5 < hi < 30 and -10 < lo < 0  # clipped well inside the outlier: finer steps for the million below it


def test_mse_range_of_nothing_is_the_seen_range():
    assert mse_range(np.zeros(8), np.linspace(-1, 1, 9), 0.2, 0.7) == (0.0, 0.7)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """The default model exported at 160x160 (fast to quantize), and a few calibration inputs."""
    from yolotune.data.samples import write_sample_images
    from yolotune.models import load_model
    from yolotune.models.export import export_onnx

    work = tmp_path_factory.mktemp("int8")
    fp32 = export_onnx(load_model("default"), work / "fp32.onnx", imgsz=(160, 160), dynamic_batch=True)
    images = [str(p) for p in write_sample_images(work / "images", 6, size=(160, 160), seed=3)]
    return work, fp32, calibration_batches(images, (160, 160), limit=6)


def test_calibrated_once_quantized_with_layers_left_in_float(small_model):
    work, fp32, cal = small_model
    ranges = calibrate(fp32, cal, "mse", work)
    all_int8 = quantize_with_ranges(fp32, work / "all.onnx", ranges, "mse", len(cal))
    group = next(g for g in layer_groups(onnx.load(str(fp32))) if g.name == "model.22 cv3.0")
    mixed = quantize_with_ranges(fp32, work / "mixed.onnx", ranges, "mse", len(cal), keep_float=group.nodes)
    dq = lambda path: sum(n.op_type == "DequantizeLinear" for n in onnx.load(str(path)).graph.node)  # noqa: E731
    assert dq(mixed) < dq(all_int8)
    meta = {p.key: p.value for p in onnx.load(str(mixed)).metadata_props}
    assert "calibration=mse" in meta["quantization"] and f"float_nodes={len(group.nodes)}" in meta["quantization"]
    assert meta["names"]  # the model's own metadata kept
    ref = run_onnx(fp32, cal[:2])
    assert run_onnx(mixed, cal[:2]).shape == ref.shape


def test_layer_groups_follow_the_modules_and_the_heads_branches(small_model):
    _, fp32, _ = small_model
    groups = layer_groups(onnx.load(str(fp32)))
    names = [g.name for g in groups]
    assert {f"model.22 cv{c}.{k}" for c in (2, 3) for k in range(3)} <= set(names) and "model.0" in names
    assert not any("/dfl/" in n for g in groups for n in g.nodes)  # the head's decoding is float anyway
    assert 0.95 <= sum(g.macs_share for g in groups) <= 1.0


def test_output_error_grows_with_the_difference():
    rng = np.random.default_rng(0)
    ref = np.concatenate([rng.uniform(10, 100, (2, 4, 50)), rng.uniform(0, 1, (2, 3, 50))], axis=1).astype(np.float32)
    assert output_error(ref, ref) == 0
    small, large = (ref + rng.normal(0, s, ref.shape).astype(np.float32) for s in (0.01, 0.1))
    assert 0 < output_error(small, ref) < output_error(large, ref)


def test_accuracy_control_keeps_the_fewest_most_sensitive_groups_in_float(small_model, monkeypatch):
    """A validation whose drop falls by 1 point per float group among the three most sensitive ones: the search
    stops at the fewest that fit, with few validations, and says what it did."""
    from yolotune.tune import int8_control

    work, fp32, cal = small_model
    ranges = calibrate(fp32, cal, "minmax", work)
    ranked = layer_groups(onnx.load(str(fp32)))[::-1]  # a ranking given here: the search is what is tested
    for k, g in enumerate(ranked):
        g.sensitivity = 1.0 - k / len(ranked)
    monkeypatch.setattr(int8_control, "rank_groups", lambda *a, **k: ranked)
    top3 = ranked[:3]
    convs = {n.name for n in onnx.load(str(fp32)).graph.node if n.op_type == "Conv"}

    def validate(path) -> float:
        floats = float_convs(path)
        return 3.5 - sum(all(n in floats for n in g.nodes if n in convs) for g in top3)

    result = accuracy_control(fp32, ranges, "minmax", len(cal), validate, 1.0, cal[:3], work)
    assert [g.name for g in result.float_groups] == [g.name for g in top3]
    assert result.int8_drop_points == 3.5 and result.drop_points == 0.5
    assert len(result.steps) <= 1 + int(np.ceil(np.log2(len(ranked) + 1)))
    assert result.to_dict()["ranking"][0]["name"] == ranked[0].name and result.model.is_file()


@pytest.mark.slow
def test_groups_are_ranked_by_the_output_error_they_remove(small_model):
    """Each group's sensitivity is the output error (against FP32) the all-INT8 model loses when that group alone
    stays float; the ranking is most sensitive first, and the first one's float variant is measurably closer."""
    from yolotune.tune.int8_control import rank_groups

    work, fp32, cal = small_model
    ranges = calibrate(fp32, cal, "minmax", work)
    groups = layer_groups(onnx.load(str(fp32)))
    ranked = rank_groups(fp32, ranges, "minmax", len(cal), groups, cal[:3], work)
    assert sorted(g.name for g in ranked) == sorted(g.name for g in groups)
    assert [g.sensitivity for g in ranked] == sorted((g.sensitivity for g in ranked), reverse=True)
    reference = run_onnx(fp32, cal[:3])
    all_int8 = output_error(run_onnx(work / "int8-minmax-all.onnx", cal[:3]), reference)
    best = quantize_with_ranges(fp32, work / "best.onnx", ranges, "minmax", len(cal), keep_float=ranked[0].nodes)
    assert ranked[0].sensitivity > 0
    assert output_error(run_onnx(best, cal[:3]), reference) == pytest.approx(all_int8 - ranked[0].sensitivity, rel=1e-4)


def float_convs(path) -> set[str]:
    """Convolutions of a QDQ model whose weights are not dequantized from 8 bits."""
    graph = onnx.load(str(path)).graph
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    return {n.name for n in graph.node if n.op_type == "Conv" and n.input[1] not in dequantized}
