"""The profiler on the GPU (marked `gpu`): real kernel counts, graph launches, NVML counters, findings, verify."""

import pytest
import torch

from yolotune.data.samples import write_sample_images
from yolotune.profile import profile

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return [str(p) for p in write_sample_images(tmp_path_factory.mktemp("photos"), 24, size=(720, 1280), seed=3)]


def test_plain_pipeline_is_found_launch_bound_and_the_fix_verified(photos):
    p = profile("default", photos, pipeline="plain", images=24, repeats=1, max_batch=8, verify=True).to_dict()
    k = p["kernels"]
    model_launches = sum(k[s]["launches"] for s in ("backbone", "neck", "head"))
    assert model_launches > 100 and k["backbone"]["graph_launches"] == 0  # eager: one launch per kernel
    busy = sum(k[s]["gpu_busy_ms"] for s in ("backbone", "neck", "head"))
    assert 0 < busy < sum(s["ms_per_image"] for s in p["stages"] if s["stage"] in ("backbone", "neck", "head"))
    kinds = {f["kind"] for f in p["findings"]}
    assert "launch_overhead" in kinds
    verified = {v["kind"]: v for v in p["verify"]}
    assert verified["launch_overhead"]["measured_gain"] > 1.0  # the graph really is faster
    assert p["counters"]["available"] and len(p["counters"]["gpu_util"]) > 10
    assert p["roofline"]["peaks"]["measured_flops"] > 1e12


def test_optimized_pipeline_replays_graphs(photos):
    p = profile("default", photos, pipeline="optimized", images=24, repeats=1, max_batch=16, batch=8).to_dict()
    k = p["kernels"]
    for s in ("backbone", "neck", "head", "nms"):
        assert k[s]["graph_launches"] == pytest.approx(1 / 8)  # one graph per section per batch of 8
        assert k[s]["kernels"] > k[s]["launches"]  # many kernels ran from one launch
    assert p["options"]["cuda_graph_active"] and "launch_overhead" not in {f["kind"] for f in p["findings"]}
    assert torch.cuda.is_available() and [q["batch"] for q in p["sweep"]["points"]] == [1, 2, 4, 8, 16]
