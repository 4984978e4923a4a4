"""yolotune optimize on the GPU (marked `gpu`): graph/compiled candidates guarded, artifact reloads and runs."""

import numpy as np
import pytest

from yolotune import Detector
from yolotune.tune.search import optimize

pytestmark = pytest.mark.gpu


def test_gpu_search_keeps_fp16_accuracy_and_saves_a_reloadable_artifact(tmp_path):
    report = optimize("default", device="cuda", out=tmp_path / "art", compile=False, val_images=64, budget_s=120)
    by = {c["name"]: c for c in report["candidates"]}
    assert by["eager fp32"]["status"] == "passed"
    assert abs(by["graph fp16"]["drop_points"]) <= 0.5 and by["graph fp16"]["status"] == "passed"
    assert by["graph fp16"]["images_per_s"] > by["eager fp32"]["images_per_s"]
    assert report["chosen"]["options"]["cuda_graph"] is True and report["reload_s"] < 5.0
    with Detector(str(tmp_path / "art")) as det:
        assert det.uses_cuda_graph and det.batch == report["chosen"]["options"]["batch"]
        out = det.detect([np.zeros((720, 1280, 3), np.uint8)])
    assert len(out) == 1
