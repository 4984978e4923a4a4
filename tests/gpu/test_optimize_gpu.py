"""yolotune optimize on the GPU (marked `gpu`): graph/compiled candidates guarded, artifact reloads and runs."""

import numpy as np
import pytest

from yolotune import Detector
from yolotune.tune.search import optimize

pytestmark = pytest.mark.gpu


def test_gpu_search_keeps_fp16_accuracy_and_saves_a_reloadable_artifact(tmp_path):
    report = optimize("default", device="cuda", out=tmp_path / "art", compile=False, val_images=64, budget_s=120).to_dict()
    by = {c["name"]: c for c in report["candidates"]}
    assert by["eager fp32"]["status"] == "passed"
    assert abs(by["graph fp16"]["drop_points"]) <= 0.5 and by["graph fp16"]["status"] == "passed"
    assert by["graph fp16"]["images_per_s"] > by["eager fp32"]["images_per_s"]
    assert report["chosen"]["options"]["cuda_graph"] is True and report["reload_s"] > 0
    with Detector(str(tmp_path / "art")) as det:
        assert det.uses_cuda_graph and det.batch == report["chosen"]["options"]["batch"]
        # cuDNN autotuning as the artifact says: on for batches above 1 (tune/search.py, cudnn_autotune)
        assert report["chosen"]["options"]["cudnn_benchmark"] is (det.batch > 1) is det.describe()["cudnn_benchmark"]
        out = det.detect([np.zeros((720, 1280, 3), np.uint8)])
    assert len(out) == 1


def test_batch_1_artifact_loads_without_cudnn_autotuning(tmp_path):
    report = optimize("default", device="cuda", out=tmp_path / "art", objective="latency", compile=False,
                      int8=False, refine=False, val_images=32, budget_s=90).to_dict()
    assert report["chosen"]["options"]["batch"] == 1 and report["chosen"]["options"]["cudnn_benchmark"] is False
    with Detector(str(tmp_path / "art")) as det:
        assert det.batch == 1 and det.describe()["cudnn_benchmark"] is False
        assert len(det.detect([np.zeros((720, 1280, 3), np.uint8)])) == 1


def test_aoti_engine_matches_eager_or_refuses_cleanly(tmp_path, monkeypatch):
    """compile="aoti": either one package serves every batch size with eager's detections and a second Detector
    loads it, or (torch 2.11 on an H100: the package's loader segfaults) a RuntimeError says so and this
    process lives on. Before the child-process check, this test killed pytest."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from matching import matched_fraction

    from yolotune.data.synth import write_dataset

    monkeypatch.setenv("YOLOTUNE_ENGINE_CACHE", str(tmp_path / "engines"))
    scenes = write_dataset(tmp_path / "scenes", 24, seed=99, workers=8)
    images = sorted(str(p) for p in (scenes / "images").iterdir())
    rows = lambda det: [(r.boxes, r.scores, r.class_ids) for r in det.predict(images)]  # noqa: E731
    try:
        with Detector("default", device="cuda", batch=8, compile="aoti") as det:
            assert det.rect is False and det.describe()["compile"] == "aoti"
            got = rows(det)  # 24 images: batches of 8, and a captured graph per bucket, all through one package
            assert det.engine.aoti.last_build["built"] is True
    except RuntimeError as e:
        assert "does not load" in str(e) and "inductor" in str(e)
        assert not list((tmp_path / "engines").glob("*.loads"))
        with Detector("default", device="cuda", batch=2) as ok:  # CUDA still usable here
            assert len(ok.detect([np.zeros((64, 64, 3), np.uint8)])) == 1
        return
    with Detector("default", device="cuda", batch=8, rect=False) as ref:
        want = rows(ref)
    frac, total = matched_fraction(want, got)
    back, _ = matched_fraction(got, want)
    assert total > 40 and frac >= 0.99 and back >= 0.99
    with Detector("default", device="cuda", batch=4, compile="aoti") as again:
        again.detect([np.zeros((720, 1280, 3), np.uint8)] * 3)
        assert again.engine.aoti.last_build["built"] is False  # loaded from the package on disk, not compiled
    assert len(list((tmp_path / "engines").glob("*.pt2"))) == 1


def test_compiled_artifact_reloads_from_its_own_cache(tmp_path):
    report = optimize("default", device="cuda", out=tmp_path / "art", int8=False, val_images=48, budget_s=240).to_dict()
    by = {c["name"]: c for c in report["candidates"]}
    assert by["compiled+graph fp16"]["status"] == "passed", by["compiled+graph fp16"]
    assert report["chosen"]["options"]["compile"] == "inductor"
    assert any("--rect" in n for n in report["notes"])  # saved on the square canvas: the report says when rect pays
    assert any((tmp_path / "art" / "inductor-cache").rglob("*"))  # the compiled kernels travel with the artifact
    assert list((tmp_path / "art" / "engines").glob("*.tcf"))  # compiled ahead of time, saved in the artifact
    with Detector(str(tmp_path / "art")) as det:
        assert det.describe()["compile"] == "inductor" and det.uses_cuda_graph
        assert det.warm_started  # the saved function loaded while cuDNN tuned the artifact's batch (engine.warm_start)
        assert len(det.detect([np.zeros((720, 1280, 3), np.uint8)] * 2)) == 2
        aot = det.describe()["ahead_of_time"]  # loaded from the artifact's files, nothing compiled again
        assert aot and not any(r["built"] or r.get("error") for r in aot), det.describe()
