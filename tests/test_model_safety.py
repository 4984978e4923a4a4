"""Models and artifacts from elsewhere: nothing a file asks for runs unless the user trusts it, models of other tasks
are refused by every command, and a tampered yolotune.json says which field is wrong."""

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from yolotune.cli import app
from yolotune.models import ModelLoadError, load_model


class _RunsACommand:
    """What a planted checkpoint holds: unpickling it calls os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_a_planted_checkpoint_runs_nothing_and_is_refused(tmp_path, fmt):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    payload = {"model": _RunsACommand(marker), "train_args": {}}
    if fmt == "zip":
        torch.save(payload, evil)
    else:
        evil.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(ModelLoadError, match="--trust-model") as e:
        load_model(str(evil))
    assert not marker.exists()  # nothing it asked for ran
    assert "system" in str(e.value) or "safely" in str(e.value)
    res = CliRunner().invoke(app, ["predict", str(evil), str(tmp_path), "--device", "cpu", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--trust-model" in res.output and not marker.exists()


def test_trusting_a_file_is_an_explicit_choice(tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _RunsACommand(marker)}, evil)
    with pytest.raises(ModelLoadError):  # trusted, it is unpickled as asked (and is then not a model)
        load_model(str(evil), trust_model=True)
    assert marker.exists()


def test_real_checkpoints_load_safely(tmp_path):
    from models import save_biased_checkpoint

    loaded = load_model("default")  # the embedded checkpoint, trained by Ultralytics
    assert loaded.spec.layout == "v8" and loaded.spec.num_classes == 10
    for cfg in ("yolov8n.yaml", "yolo11n.yaml", "yolo26n.yaml"):
        path = save_biased_checkpoint(tmp_path / f"{cfg}.pt", cfg)
        assert load_model(str(path)).spec.format == "ultralytics"


@pytest.mark.parametrize("cfg,task", [("yolov8n-pose.yaml", "pose"), ("yolov8n-seg.yaml", "segment"),
                                      ("yolov8n-cls.yaml", "classify"), ("yolov8n-obb.yaml", "obb")])
def test_models_of_other_tasks_are_refused(cfg, task):
    with pytest.raises(ModelLoadError, match=f"yolotune runs detection models only; this is a {task} model"):
        load_model(cfg)


def _pose_onnx(tmp_path: Path, metadata: bool) -> Path:
    """A pose export as Ultralytics lays it out ([1, 56, N]: 4 box, 1 class, 17 keypoints x 3), with its metadata or
    with none."""
    import onnx
    from ultralytics import YOLO

    from yolotune.models.ultralytics import RawDetectionOutput

    net = RawDetectionOutput(YOLO("yolov8n-pose.yaml").model.float().eval())
    path = tmp_path / f"pose{int(metadata)}.onnx"
    torch.onnx.export(net, torch.zeros(1, 3, 160, 160), str(path), input_names=["images"], output_names=["output0"],
                      opset_version=17, dynamo=False)
    m = onnx.load(str(path))
    if metadata:
        for k, v in {"task": "pose", "names": "{0: 'person'}", "imgsz": "[160, 160]"}.items():
            m.metadata_props.add(key=k, value=v)
    onnx.save(m, str(path))
    return path


@pytest.mark.parametrize("metadata", [True, False])
def test_a_pose_onnx_is_refused_with_or_without_metadata(tmp_path, metadata):
    path = _pose_onnx(tmp_path, metadata)
    with pytest.raises(ModelLoadError, match="yolotune runs detection models only"):
        load_model(str(path))


@pytest.mark.parametrize("command", ["predict", "run", "plan", "val", "export", "profile", "diagram", "optimize"])
def test_every_command_refuses_a_pose_model_with_exit_2(tmp_path, command):
    img = tmp_path / "x.jpg"
    from PIL import Image

    Image.new("RGB", (64, 48)).save(img)
    args = {
        "predict": ["predict", "yolov8n-pose.yaml", str(img), "--device", "cpu", "--out", str(tmp_path / "o")],
        "run": ["run", "yolov8n-pose.yaml", "-s", str(img), "--device", "cpu", "--out", str(tmp_path / "o")],
        "plan": ["plan", "yolov8n-pose.yaml", "--device", "cpu"],
        "val": ["val", "yolov8n-pose.yaml", str(tmp_path), "--device", "cpu"],
        "export": ["export", "yolov8n-pose.yaml", "--out", str(tmp_path / "m.onnx")],
        "profile": ["profile", "yolov8n-pose.yaml", str(img), "--device", "cpu", "--out", str(tmp_path / "p")],
        "diagram": ["diagram", "yolov8n-pose.yaml", "--out", str(tmp_path / "d.svg")],
        "optimize": ["optimize", "yolov8n-pose.yaml", "--device", "cpu", "--out", str(tmp_path / "a")],
    }[command]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    assert "yolotune runs detection models only; this is a pose model" in " ".join(res.output.split())
    assert res.exception is None or isinstance(res.exception, SystemExit)  # no traceback


# ------------------------------------------------------------------------------------------------- artifacts
@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    from yolotune.assets import resolve
    from yolotune.options import DetectorOptions
    from yolotune.tune.artifact import write_artifact

    root = tmp_path_factory.mktemp("art") / "tuned"
    write_artifact(root, resolve("default"), DetectorOptions(batch=4, precision="fp32", imgsz=(320, 320)),
                   {"tuned_on": "CPU", "objective": "throughput", "report": "report.json"})
    return root


def _tampered(artifact: Path, tmp_path: Path, change) -> Path:
    root = tmp_path / "art"
    shutil.copytree(artifact, root)
    record = json.loads((root / "yolotune.json").read_text())
    record = change(record)
    (root / "yolotune.json").write_text(record if isinstance(record, str) else json.dumps(record))
    return root


def _set(path, value):
    def change(r):
        target = r
        for k in path[:-1]:
            target = target[k]
        if value is KeyError:
            del target[path[-1]]
        else:
            target[path[-1]] = value
        return r
    return change


TAMPERED = [
    (lambda r: [1, 2, 3], "must be a JSON object"),
    (lambda r: '"fast"', "must be a JSON object"),
    (lambda r: "{not json", "not valid JSON"),
    (_set(["model"], "other.pt"), "model file other.pt is missing"),
    (_set(["model"], KeyError), "'model' is missing"),
    (_set(["model"], None), "'model' must be a file name"),
    (_set(["model"], "../default.onnx"), "inside the artifact"),
    (_set(["model"], "/etc/passwd"), "inside the artifact"),
    (_set(["options"], [1, 2]), "'options' must be an object"),
    (_set(["options"], "fast"), "'options' must be an object"),
    (_set(["options", "batch"], None), "'options.batch' must be a positive integer"),
    (_set(["options", "batch"], "sixteen"), "'options.batch' must be a positive integer"),
    (_set(["options", "batch"], -5), "'options.batch' must be a positive integer"),
    (_set(["options", "batch"], True), "'options.batch' must be a positive integer"),
    (_set(["options", "imgsz"], "huge"), "'options.imgsz'"),
    (_set(["options", "imgsz"], [0, 640]), "'options.imgsz'"),
    (_set(["options", "precision"], "fp7"), "'options.precision'"),
    (_set(["options", "warp_speed"], 9), "unknown option 'options.warp_speed'"),
    (_set(["version"], 999), "version 999"),
    (_set(["version"], "1"), "'version'"),
    (_set(["surprise"], 1), "unknown field 'surprise'"),
]


@pytest.mark.parametrize("change,message", TAMPERED)
def test_a_tampered_artifact_says_which_field_is_wrong(artifact, tmp_path, change, message):
    from yolotune import Detector

    root = _tampered(artifact, tmp_path, change)
    with pytest.raises(ModelLoadError, match=message.replace("(", r"\(").replace(".", r"\.")):
        Detector(str(root), device="cpu")
    res = CliRunner().invoke(app, ["predict", str(root), str(tmp_path), "--device", "cpu", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "yolotune.json" in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)


def test_a_valid_artifact_still_loads_with_its_options(artifact):
    from yolotune import Detector

    with Detector(str(artifact), device="cpu") as det:
        assert det.batch == 4 and det.imgsz == (320, 320)
