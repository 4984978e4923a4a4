"""How many Ray actors with what resources, for clusters of N GPUs and N nodes (no Ray needed), and the records the
driver rebuilds from JSONL on --resume."""

from types import SimpleNamespace

import numpy as np

from yolotune.scale.cluster import plan_actors
from yolotune.types import Detections, ErrorRecord, InputRef, result_from_dict


def cluster(gpus: int, nodes: list[int]):
    return SimpleNamespace(
        cluster_resources=lambda: {"CPU": float(sum(nodes)), **({"GPU": float(gpus)} if gpus else {})},
        nodes=lambda: [{"Alive": True, "Resources": {"CPU": float(c)}} for c in nodes])


def test_one_actor_per_gpu_or_as_many_per_gpu_as_asked():
    # the host side gets the cores but one per node (Ray's own tasks): 63 over 4 actors a node, 15 each; over 8, 7
    assert plan_actors(cluster(8, [64, 64]), "auto", None, 1.0) == (8, {"num_gpus": 1.0, "num_cpus": 15})
    assert plan_actors(cluster(8, [64, 64]), "cuda", None, 0.5) == (16, {"num_gpus": 0.5, "num_cpus": 7})
    assert plan_actors(cluster(1, [16]), "auto", None, 1.0) == (1, {"num_gpus": 1.0, "num_cpus": 15})
    assert plan_actors(cluster(1, [2]), "auto", None, 1.0) == (1, {"num_gpus": 1.0, "num_cpus": 1})
    assert plan_actors(cluster(8, [64, 64]), "auto", 3, 1.0)[0] == 3


def test_cpu_clusters_get_one_actor_per_node_with_its_cpus():
    assert plan_actors(cluster(0, [16, 16, 16]), "auto", None, 1.0) == (3, {"num_cpus": 16})
    assert plan_actors(cluster(4, [16]), "cpu", None, 1.0) == (1, {"num_cpus": 16})  # --device cpu on a GPU node
    assert plan_actors(cluster(0, [2]), "cpu", 2, 1.0) == (2, {"num_cpus": 1})  # two actors share two cores


def test_records_come_back_as_the_results_they_were():
    det = Detections(InputRef("a.jpg", 3, 0.1), (48, 64), np.array([[1.25, 2.5, 30.0, 40.0]], np.float32),
                     np.array([0.5], np.float32), np.array([2]), {2: "car"})
    back = result_from_dict(det.to_dict())
    assert back.to_dict() == det.to_dict() and back.class_names == ["car"]
    err = ErrorRecord(InputRef("b.jpg"), "cannot decode", "decode")
    assert result_from_dict(err.to_dict()).to_dict() == err.to_dict()


def test_without_ray_the_cli_says_what_to_install(tmp_path, monkeypatch):
    import sys

    from typer.testing import CliRunner

    from yolotune.cli import app

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    (tmp_path / "in").mkdir()
    res = CliRunner().invoke(app, ["predict", "default", str(tmp_path / "in"), "--device", "cpu", "--ray", "local",
                                   "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "yolotune[ray]" in res.output, res.output


def test_each_input_gets_its_own_results_also_when_listed_twice():
    from yolotune.scale.predict import results_per_input

    def det(path, frame=None):
        return Detections(InputRef(path, frame), (8, 8), np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                          np.zeros(0, np.int64))

    results = [det("a.jpg"), det("a.jpg"), det("v.mp4", 0), det("v.mp4", 1), ErrorRecord(InputRef("b.jpg"), "bad")]
    grouped = results_per_input(["a.jpg", "a.jpg", "v.mp4", "b.jpg"], ["image", "image", "video", "image"], results)
    assert [len(g) for g in grouped] == [1, 1, 2, 1] and grouped[3][0].ok is False


def test_rows_are_taken_by_position_early_ones_wait_and_repeats_are_dropped():
    from yolotune.scale.predict import _row_for

    rows = iter([{"index": 0}, {"index": 2}, {"index": 1}, {"index": 1}, {"index": 3}])
    pending: dict = {}
    assert [_row_for(i, rows, pending)["index"] for i in range(4)] == [0, 1, 2, 3] and pending == {}


def test_a_calls_results_travel_packed_and_come_back_as_they_were():
    from yolotune.scale.predict import pack_results, unpack_results

    names = {0: "person", 2: "car"}
    a = Detections(InputRef("a.jpg"), (48, 64), np.array([[1.5, 2.5, 30.0, 40.0], [0, 0, 5, 5]], np.float32),
                   np.array([0.9, 0.3], np.float32), np.array([2, 0]), names)
    empty = Detections(InputRef("v.mp4", 3, 0.1), (48, 64), np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                       np.zeros(0, np.int64), names)
    bad = ErrorRecord(InputRef("v.mp4", 4), "frames 4-5 lost", "decode")
    grouped = [[a], [empty, bad], [], [ErrorRecord(InputRef("b.jpg"), "cannot decode", "decode")]]
    back = unpack_results(pack_results(grouped))
    assert [[r.to_dict() for r in g] for g in back] == [[r.to_dict() for r in g] for g in grouped]
    assert back[0][0].class_names == ["car", "person"] and back[1][0].image_size == (48, 64)
