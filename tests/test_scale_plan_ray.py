"""plan --ray on a real local Ray cluster (2 CPUs): each GPU type (here the CPU) measured once, the actors' figures
summed, and the total verified by running it on the cluster, stepping down until a run holds."""

import json

import pytest
from typer.testing import CliRunner

from yolotune.cli import app

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow



def test_plan_on_ray_measures_each_type_once_sums_and_verifies(ray_cluster, tmp_path):
    res = CliRunner().invoke(app, ["plan", "default", "--ray", "local", "--device", "cpu", "--fps", "5",
                                   "--resolution", "64x48", "--seconds", "5", "--batch", "2", "--actors", "2",
                                   "--out", str(tmp_path / "plan.json")])
    assert res.exit_code == 0, res.output
    assert "streams predicted" in res.output and "verified:" in res.output
    r = json.loads((tmp_path / "plan.json").read_text())
    assert list(r["capacities"]) == ["CPU"]  # one type, measured once, on one actor
    measured = r["capacities"]["CPU"]
    assert measured["frames_per_s"] > 0 and measured["binding"] in measured["limits"]
    assert len(r["actors"]) == 2 and all(a["capacity_fps"] == measured["frames_per_s"] for a in r["actors"])
    assert r["predicted_streams"] == int(2 * measured["frames_per_s"] / 5) >= 1  # the two actors' figures summed
    runs = r["verification"]
    assert runs and runs[0]["streams"] == r["predicted_streams"]
    assert [v["streams"] for v in runs] == sorted((v["streams"] for v in runs), reverse=True)  # stepping down
    assert all(v["frames"] > 0 and v["seconds"] >= 4.5 for v in runs)  # each ran its time on the cluster
    if runs[0]["streams"] >= 2:  # placed over both actors
        assert len([a for a, load in runs[0]["actors_load_fps"].items() if load > 0]) == 2
    held = [v["streams"] for v in runs if v["holds"]]
    assert r["verified_streams"] == (max(held) if held else 0)
