"""DetectorOptions: one typed object for every Detector setting, checked once, to and from JSON."""

import json

import pytest

from yolotune import Detector, DetectorOptions
from yolotune.assets import resolve
from yolotune.models.artifact import read_artifact
from yolotune.tune.artifact import write_artifact


def test_bad_values_and_unknown_names_fail_with_the_option_named():
    with pytest.raises(ValueError, match="option batch must be a positive integer, not 0"):
        DetectorOptions(batch=0)
    with pytest.raises(ValueError, match="option nms must be one of"):
        DetectorOptions(nms="fast")
    with pytest.raises(ValueError, match="unknown option 'warp'"):
        DetectorOptions().replace(warp=9)
    with pytest.raises(ValueError, match="unknown option 'bacth'"):
        DetectorOptions.from_dict({"bacth": 4})
    with pytest.raises(ValueError, match="unknown option 'trust_model'"):
        DetectorOptions.from_dict({"trust_model": True}, saved=True)  # an artifact cannot vouch for its model


def test_json_round_trip_keeps_every_value():
    opts = DetectorOptions(precision="fp16", batch=8, imgsz=[384, 640], conf=0.4, compile="inductor", seed=3)
    assert opts.imgsz == (384, 640)
    back = DetectorOptions.from_dict(json.loads(json.dumps(opts.to_dict())))
    assert back == opts
    assert opts.changed() == {"precision": "fp16", "batch": 8, "imgsz": [384, 640], "conf": 0.4,
                              "compile": "inductor", "seed": 3}
    assert opts.model_options() == {"seed": 3}
    assert DetectorOptions().merged({"batch": None, "conf": 0.5}) == DetectorOptions(conf=0.5)


def test_a_detector_runs_with_its_options_and_overrides_win(tmp_path):
    opts = DetectorOptions(device="cpu", batch=2, imgsz=64, conf=0.5)
    with Detector("default", opts) as det:
        assert det.options == opts and det.batch == 2 and det.imgsz == (64, 64) and det.post.conf == 0.5
    with Detector("default", opts, batch=4) as det:
        assert det.batch == 4 and det.post.conf == 0.5
    with pytest.raises(ValueError, match="unknown option 'bacth'"):
        Detector("default", device="cpu", bacth=4)  # a misspelt keyword is not swallowed by the loader


def test_an_artifact_keeps_its_options_and_the_caller_may_replace_them(tmp_path):
    tuned = DetectorOptions(precision="fp32", batch=4, imgsz=(96, 128), topk=512)
    write_artifact(tmp_path / "a", resolve("default"), tuned.replace(device="cuda:3"), {"tuned_on": "CPU"})
    saved = json.loads((tmp_path / "a" / "yolotune.json").read_text())["options"]
    assert saved == {k: v for k, v in tuned.to_dict().items() if v is not None and k not in ("device", "return_images")}
    assert saved["cuda_graph"] is True and "device" not in saved  # every choice, explicit; not the machine's device
    assert read_artifact(tmp_path / "a").options == tuned
    with Detector(str(tmp_path / "a"), device="cpu") as det:
        assert det.batch == 4 and det.imgsz == (96, 128) and det.post.topk == 512
    with Detector(str(tmp_path / "a"), DetectorOptions(device="cpu")) as det:  # given options replace the tuned
        assert det.batch == 16 and det.post.topk == 2048
