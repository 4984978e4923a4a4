"""ONNX exports: layouts detected from shapes and metadata, clear errors for other tasks, same boxes as PyTorch."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from yolotune import Detector, ModelLoadError, load_model
from yolotune.data.samples import write_sample_images
from yolotune.models.export import export_onnx

from matching import matched_fraction


def constant_model(path, outputs: dict[str, np.ndarray], input_shape=(1, 3, 64, 64), metadata=None):
    """An ONNX model that ignores its image input and returns fixed tensors."""
    nodes, outs = [], []
    for name, value in outputs.items():
        nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value.astype(np.float32))))
        outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(value.shape)))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, list(input_shape))], outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in (metadata or {}).items():
        e = model.metadata_props.add()
        e.key, e.value = k, v
    onnx.save(model, str(path))
    return str(path)


def test_layouts_detected(tmp_path):
    v8 = constant_model(tmp_path / "v8.onnx", {"out": np.zeros((1, 7, 500))})
    v5 = constant_model(tmp_path / "v5.onnx", {"out": np.zeros((1, 500, 8))})
    e2e = constant_model(tmp_path / "e2e.onnx", {"out": np.zeros((1, 300, 6))})
    assert (load_model(v8).spec.layout, load_model(v8).spec.num_classes) == ("v8", 3)
    assert (load_model(v5).spec.layout, load_model(v5).spec.num_classes) == ("v5", 3)
    assert load_model(e2e).spec.layout == "end2end"
    meta = constant_model(tmp_path / "m.onnx", {"out": np.zeros((1, 300, 6))},
                          metadata={"names": "{0: 'cat', 1: 'dog'}", "stride": "32", "imgsz": "[64, 64]", "task": "detect"})
    spec = load_model(meta).spec
    assert spec.names == {0: "cat", 1: "dog"} and spec.fixed_hw == (64, 64) and spec.fixed_batch == 1


@pytest.mark.parametrize(
    "outputs,input_shape,metadata,message",
    [
        ({"logits": np.zeros((1, 1000))}, (1, 3, 64, 64), None, "classification"),
        ({"out": np.zeros((1, 116, 500)), "protos": np.zeros((1, 32, 16, 16))}, (1, 3, 64, 64), None, "segmentation"),
        ({"out": np.zeros((1, 7, 500))}, (1, 3, 64), None, "expected one image input"),
        ({"out": np.zeros((1, 7, 500))}, (1, 3, 64, 64), {"task": "pose"}, "this is a pose model"),
    ],
)
def test_clear_errors_for_non_detection_models(tmp_path, outputs, input_shape, metadata, message):
    path = constant_model(tmp_path / "bad.onnx", outputs, input_shape, metadata)
    with pytest.raises(ModelLoadError) as e:
        load_model(path)
    assert message in str(e.value) and "bad.onnx" in str(e.value)


def test_garbage_onnx_file(tmp_path):
    p = tmp_path / "garbage.onnx"
    p.write_bytes(b"\x08\x07 not a protobuf")
    with pytest.raises(ModelLoadError, match="garbage.onnx"):
        load_model(str(p))


def test_v5_and_end2end_outputs_decode_to_source_pixels(tmp_path):
    """Known outputs on a 64x64 canvas map back to a 128x128 image (gain 0.5, no padding)."""
    v5 = np.zeros((1, 500, 8), np.float32)
    v5[0, 0] = [32, 32, 20, 10, 0.9, 0.1, 0.9, 0.2]  # xywh, objectness, 3 class scores -> class 1, score 0.81
    v5[0, 1] = [10, 10, 4, 4, 0.2, 1.0, 0.0, 0.0]  # score 0.2: below the threshold
    e2e = np.zeros((1, 300, 6), np.float32)
    e2e[0, 0] = [22, 27, 42, 37, 0.8, 2]
    e2e[0, 1] = [0, 0, 8, 8, 0.1, 1]
    for name, out in (("v5", v5), ("e2e", e2e)):
        path = constant_model(tmp_path / f"{name}.onnx", {"out": out}, metadata={"imgsz": "[64, 64]"})
        with Detector(path, device="cpu", batch=1) as det:
            (r,) = det.detect([np.zeros((128, 128, 3), np.uint8)])
        assert len(r) == 1, name
        np.testing.assert_allclose(r.boxes[0], [44, 54, 84, 74], atol=1e-4)
        assert r.class_ids[0] == (1 if name == "v5" else 2)
        assert abs(r.scores[0] - (0.81 if name == "v5" else 0.8)) < 1e-5


@pytest.mark.parametrize("dynamic_batch", [True, False])
def test_exported_model_matches_pytorch(tmp_path, dynamic_batch):
    images = [str(p) for p in write_sample_images(tmp_path / "imgs", 3, size=(480, 640), seed=11)]
    path = export_onnx(load_model("yolov8n.yaml", class_bias=-2.0), tmp_path / "v8n.onnx", imgsz=(640, 640), dynamic_batch=dynamic_batch)
    spec = load_model(str(path)).spec
    assert spec.layout == "v8" and spec.num_classes == 80 and spec.fixed_batch == (None if dynamic_batch else 1)
    with Detector(str(path), device="cpu", batch=2) as det:
        assert det.engine.name == "onnxruntime" and not det.rect  # a static 640x640 export takes square inputs
        got = [(r.boxes, r.scores, r.class_ids) for r in det.predict(images)]
    with Detector("yolov8n.yaml", device="cpu", batch=2, class_bias=-2.0, rect=False) as det:
        ref = [(r.boxes, r.scores, r.class_ids) for r in det.predict(images)]
    frac, total = matched_fraction(ref, got)
    assert total > 50 and frac >= 0.99


def test_int8_keeps_the_heads_decoding_in_float_and_its_feature_layers_quantized(tmp_path):
    """What INT8 leaves in float: the detection head's decoding (DFL softmax and expectation, anchors, class
    sigmoid, box arithmetic); its feature convolutions and their SiLU activations are quantized like the rest."""
    import onnx

    from yolotune.tune.int8 import _head_nodes_to_exclude

    path = export_onnx(load_model("default"), tmp_path / "d.onnx", imgsz=(160, 160), dynamic_batch=False)
    model = onnx.load(str(path))
    excluded = set(_head_nodes_to_exclude(model))
    head = [n for n in model.graph.node if "/model.22/" in n.name]
    assert {"/model/model.22/dfl/Softmax", "/model/model.22/dfl/MatMul"} <= excluded  # the DFL expectation
    assert "/model/model.22/Sigmoid" in excluded  # class probabilities
    kept = {n.name for n in head} - excluded
    assert kept and all(("/act/" in n) or n.endswith("Conv") for n in kept) and not any("/dfl/" in n for n in kept)
    assert sum("/act/" in n for n in kept) == 24  # SiLU (Sigmoid + Mul) after each of the 12 feature convolutions


@pytest.mark.parametrize("dynamic_batch", [True, False])
def test_cpu_batch_runs_split_across_cores_with_the_same_output(tmp_path, dynamic_batch):
    """engine/ort.py: a batch runs as single-threaded parts in parallel (one per core), a lone image as one run on
    every core; the output is the same as one run of the whole batch."""
    import threading

    import torch

    from yolotune.engine.ort import OrtEngine

    path = export_onnx(load_model("default"), tmp_path / "d.onnx", imgsz=(96, 96), dynamic_batch=dynamic_batch)
    split = OrtEngine(load_model(str(path), threads=2))
    whole = OrtEngine(load_model(str(path), threads=2, split_batch=False))
    assert split.describe()["split_batch"] == 2 and whole.describe()["split_batch"] == 1
    x = torch.rand(3, 3, 96, 96)
    split(x[:1])
    assert split._single is None  # one image: the multi-threaded session, no parts
    callers = set()
    single = split._parallel()[0]
    run = single.run
    split._single = type("Recorder", (), {"run": lambda self, *a: callers.add(threading.current_thread().name) or run(*a)})()
    torch.testing.assert_close(split(x), whole(x), rtol=1e-4, atol=1e-3)
    assert threading.current_thread().name in callers and any(n.startswith("yolotune-ort") for n in callers)
    with Detector(str(path), device="cpu", batch=3, split_batch=False) as det:
        assert det.describe()["split_batch"] == 1


def test_int8_quantization_prints_no_advice_from_onnx_runtime(tmp_path, caplog):
    import logging

    import numpy as np

    from yolotune.tune.int8 import quantize_int8

    path = export_onnx(load_model("default"), tmp_path / "d.onnx", imgsz=(96, 96), dynamic_batch=False)
    batches = [np.random.default_rng(i).random((1, 3, 96, 96), dtype=np.float32) for i in range(2)]
    with caplog.at_level(logging.WARNING):
        out = quantize_int8(path, tmp_path / "q.onnx", batches)
    assert out.is_file()
    assert not [r for r in caplog.records if "pre-processing" in r.getMessage()]
    logging.warning("Please consider to run pre-processing, said by someone else")  # only ours is silenced
    assert [r for r in caplog.records if "someone else" in r.getMessage()]


def test_int8_calibration_holds_a_few_batches_at_a_time(tmp_path, monkeypatch):
    """ONNX Runtime's calibrators keep every tensor of the batches they are given: fed all at once, 32 calibration
    pictures at 640x640 held ~9 GB. They are fed in chunks, whose ranges and histograms ORT merges."""
    import numpy as np
    from onnxruntime.quantization import calibrate

    from yolotune.tune.int8 import CALIBRATION_CHUNK, _chunk, quantize_int8

    assert (_chunk(32), _chunk(31), _chunk(6), _chunk(2)) == (4, 1, 3, 2)
    seen = []
    real = calibrate.HistogramCalibrater.collect_data

    def counting(self, reader):
        given = [0]
        read = reader.get_next

        def counted():
            item = read()
            given[0] += item is not None
            return item

        reader.get_next = counted
        try:
            return real(self, reader)
        finally:
            seen.append(given[0])

    monkeypatch.setattr(calibrate.HistogramCalibrater, "collect_data", counting)
    path = export_onnx(load_model("default"), tmp_path / "d.onnx", imgsz=(64, 64), dynamic_batch=False)
    batches = [np.random.default_rng(i).random((1, 3, 64, 64), dtype=np.float32) for i in range(8)]
    assert quantize_int8(path, tmp_path / "q.onnx", batches, method="entropy").is_file()
    assert sum(seen) == 8 and max(seen) <= CALIBRATION_CHUNK


def test_openvino_runs_the_onnx_model_as_onnx_runtime_does(tmp_path):
    """The same ONNX file on OpenVINO (the openvino extra): the detections ONNX Runtime gives."""
    pytest.importorskip("openvino")
    path = export_onnx(load_model("default"), tmp_path / "m.onnx", imgsz=(320, 320), dynamic_batch=True)
    images = [str(p) for p in write_sample_images(tmp_path / "i", 5, size=(240, 320), seed=4)]
    with Detector(str(path), device="cpu", batch=4) as ort_det, \
            Detector(str(path), device="cpu", batch=4, runtime="openvino") as ov_det:
        want, got = list(ort_det.predict(images)), list(ov_det.predict(images))
        assert ov_det.engine.describe()["engine"] == "openvino"
    rows = lambda rs: [(r.boxes, r.scores, r.class_ids) for r in rs]  # noqa: E731
    frac, total = matched_fraction(rows(want), rows(got), iou=0.9, score_tol=0.02)
    assert total > 3 and frac >= 0.95


def test_openvino_is_refused_for_a_pytorch_model():
    with pytest.raises(ValueError, match="runtime 'openvino' runs ONNX models: export one"):
        Detector("default", device="cpu", runtime="openvino")
    with pytest.raises(ValueError, match="one of auto, onnxruntime, openvino"):
        Detector("default", device="cpu", runtime="tensorrt")
