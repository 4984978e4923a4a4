"""Ray on the GPU: predict --ray's records equal plain predict's on CUDA, and run --ray's streams over two actors
sharing the GPU go on when one is killed, no frame lost or repeated."""

import json

import pytest

from yolotune.data.samples import write_sample_images
from yolotune.data.synth import write_video

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.gpu



def test_predict_on_ray_on_cuda_writes_what_plain_predict_writes(ray_cluster, tmp_path):
    from yolotune import Detector
    from yolotune.pipeline.run import predict_to_sinks
    from yolotune.scale.predict import predict_on_ray

    write_sample_images(tmp_path / "in", 96, size=(360, 640), seed=3)
    opts = {"device": "cuda", "batch": 16}
    with Detector("default", **opts) as det:
        predict_to_sinks(det, [tmp_path / "in"], tmp_path / "plain", ["jsonl"])
    summary = predict_on_ray("default", [tmp_path / "in"], tmp_path / "ray", ["jsonl"], opts, actors=1)
    from matching import matched_fraction
    from yolotune.types import result_from_dict

    def read(folder):
        return [result_from_dict(json.loads(line)) for line in (tmp_path / folder / "detections.jsonl").open()]

    plain, on_ray = read("plain"), read("ray")
    assert [r.source.path for r in on_ray] == [r.source.path for r in plain] and len(on_ray) == 96
    # FP16 on the GPU: batches of other sizes (a call's inputs are batched on their own) round a little otherwise
    as_arrays = lambda rs: [(r.boxes, r.scores, r.class_ids) for r in rs]  # noqa: E731
    fraction, total = matched_fraction(as_arrays(plain), as_arrays(on_ray))
    assert total > 100 and fraction >= 0.98
    assert summary.actors[0]["device"].startswith("cuda")


def test_run_on_ray_streams_move_off_a_killed_gpu_actor_losing_no_frame(ray_cluster, tmp_path):
    from yolotune.io.stream_specs import SourceSpec
    from yolotune.scale.run import ClusterOptions, run_on_ray
    from yolotune.serve.runtime import RunOptions

    clip = write_video(tmp_path / "c.mp4", frames=150, size=(360, 640), seed=2)
    specs = [SourceSpec(str(clip), "file", f"s{i}", realtime=True, lossless=True) for i in range(6)]
    killed, seen = [], [0]

    def kill_one(update):
        seen[0] += sum(1 for _, r in update["records"] if "frame" in r)
        if not killed and seen[0] >= 200:
            victim = next(a for a in update["actors"] if a["streams"])
            killed.append(victim)
            ray.kill(ray.get_actor(victim["ray_name"]), no_restart=False)

    summary = run_on_ray("default", specs, RunOptions(out=tmp_path / "out", max_batch=16),
                         {"device": "cuda", "batch": 16},
                         ClusterOptions(actors=2, gpus_per_actor=0.5, capacity={"frames_per_s": 1000}),
                         on_poll=kill_one)
    assert killed and summary.moves >= 1 and summary.failed == []
    for i in range(6):
        rows = [json.loads(line) for line in (tmp_path / "out" / f"s{i}" / "detections.jsonl").read_text().splitlines()]
        assert [r["frame"] for r in rows if "frame" in r] == list(range(150))
    assert all(a["device"].startswith("cuda") for a in summary.actors)
