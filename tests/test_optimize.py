"""yolotune optimize on the CPU: candidates guarded for accuracy, an artifact that reloads, bad input handled."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from yolotune import Detector
from yolotune.cli import app
from yolotune.data.synth import write_dataset
from yolotune.tune import search
from yolotune.models.artifact import read_artifact
from yolotune.tune.candidates import search_space
from yolotune.tune.search import LATER_CALIBRATIONS
from yolotune.tune.int8 import CalibrationError, calibration_batches


@pytest.fixture(scope="module")
def val(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("val"), 12, seed=77, workers=2)


@pytest.fixture(scope="module")
def optimized(tmp_path_factory, val):
    out = tmp_path_factory.mktemp("artifact")
    res = CliRunner().invoke(app, ["optimize", "default", "--device", "cpu", "--data", str(val), "--out", str(out),
                                   "--budget", "600"])
    assert res.exit_code == 0, res.output
    return out, json.loads((out / "report.json").read_text()), res.output


@pytest.mark.slow
def test_every_candidate_is_measured_and_guarded(optimized):
    out, report, output = optimized
    names = [c["name"] for c in report["candidates"]]
    by_name = {c["name"]: c for c in report["candidates"]}
    planned = [c.name for c in search_space("cpu", budget_s=600)]
    later = min(i for i, n in enumerate(planned) if any(f"({m})" in n for m in LATER_CALIBRATIONS))
    mixed = [n for n in names if "int8 mixed" in n]
    # the engines and the first calibrations, then accuracy control where they all lost too much, then the rest
    assert names[:later] == planned[:later]
    first_int8 = [n for n in planned[:later] if "int8" in n]
    assert bool(mixed) == all(by_name[n]["status"] != "passed" for n in first_int8)
    assert names[later : len(planned) + len(mixed)] == mixed + planned[later:]
    if mixed:
        assert by_name[mixed[0]]["int8_control"]["steps"][0]["float_groups"] == 0
    n_engines = len(planned) + len(mixed)
    engines = [c for c in report["candidates"] if c["name"] in names[:n_engines]]
    winner = max((c for c in engines if c["status"] == "passed"), key=lambda c: c["images_per_s"])
    # then the winner at 512x512 and 416x416 (re-exported and re-calibrated) and with a top-k of 512
    assert names[n_engines:] == [f"{winner['name']} @ 512x512", f"{winner['name']} @ 416x416",
                                 f"{winner['name']}, top-k 512"]
    # every candidate that passed, at the batch the winner was chosen at
    assert all(c["images_per_s_at_chosen_batch"] > 0 for c in report["candidates"] if c["status"] == "passed")
    for c in report["candidates"]:
        assert c["status"] in ("passed", "rejected"), c
        assert c["images_per_s"] > 0 and c["latency_ms_b1"] > 0 and c["map50_95"] > 0.3
        assert (c["status"] == "passed") == (c["drop_points"] <= 1.0)
    assert report["candidates"][0]["drop_points"] == 0.0 and report["candidates"][0]["against"] == "labels"
    chosen = report["chosen"]
    passed = [c for c in report["candidates"] if c["status"] == "passed"]
    assert any(lv["lever"] == "input 512x512" for lv in report["levers"])
    fastest = max(passed, key=lambda c: c["images_per_s"])
    if fastest["name"].startswith(winner["name"] + " ") or fastest["name"].startswith(winner["name"] + ","):
        # a refinement wins only by a clear margin (5%) over the engine it refines
        margin = fastest["images_per_s"] / winner["images_per_s"]
        assert chosen["name"] == (fastest["name"] if margin >= 1.05 else winner["name"])
    else:
        assert chosen["name"] == fastest["name"]
    assert report["summary"].startswith("from ") and "because" in report["summary"]
    assert any(lv["lever"].startswith("INT8") for lv in report["levers"])
    if chosen["options"]["batch"] > 1 and chosen["name"].startswith("onnxruntime"):
        # the ONNX Runtime engine's split, at the chosen batch, against one run
        (split,) = [lv for lv in report["levers"] if lv["lever"].startswith("batch split across the cores")]
        assert split["speedup"] > 0 and split["batch"] == chosen["options"]["batch"]
    assert "| lever |" in (out / "report.md").read_text() and "artifact:" in output
    page = (out / "report.html").read_text()
    assert page.count("<svg") >= 2 and all(c["name"] in page for c in report["candidates"])


@pytest.mark.slow
def test_artifact_reloads_with_its_options(optimized, val):
    out, report, _ = optimized
    art = read_artifact(out)
    assert art.options.batch == report["chosen"]["options"]["batch"]
    assert art.options.cudnn_benchmark is None  # a GPU setting: CPU artifacts do not carry it
    assert "cudnn_benchmark" not in json.loads((out / "yolotune.json").read_text())["options"]
    assert report["reload_s"] > 0
    images = sorted(str(p) for p in (val / "images").iterdir())[:4]
    with Detector(str(out), device="cpu") as det:
        assert det.batch == art.options.batch
        results = list(det.predict(images))
    assert all(r.ok for r in results) and sum(len(r) for r in results) > 0
    with Detector(str(out), device="cpu", batch=2) as det:  # explicit options win
        assert det.batch == 2
    res = CliRunner().invoke(app, ["predict", str(out), *images, "--device", "cpu", "--out", str(out / "pred"), "--json"])
    assert res.exit_code == 0, res.output


@pytest.mark.slow
def test_unlabelled_data_uses_the_reference_as_labels(tmp_path, val, monkeypatch):
    from yolotune.data import validate

    images = tmp_path / "photos"
    images.mkdir()
    for p in sorted((val / "images").iterdir())[:6]:
        (images / p.name).write_bytes(p.read_bytes())
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    runs = []  # (rect canvases?,) of each pass over the validation set
    real = validate.predict_coco

    def predict_coco(detector, *args):
        runs.append((detector.rect,))
        return real(detector, *args)

    monkeypatch.setattr(validate, "predict_coco", predict_coco)
    report = search.optimize("default", images, device="cpu", out=tmp_path / "a", int8=False, budget_s=300).to_dict()
    ref, ort = report["candidates"][:2]
    assert ref["against"] == "reference pseudo-labels" and ref["map50_95"] == pytest.approx(1.0, abs=0.02)
    assert ort["status"] in ("passed", "rejected")
    # one pass over the validation set per candidate, the reference's included; all on the same square canvas
    guarded = [c for c in report["candidates"] if c["status"] in ("passed", "rejected")]
    assert len(runs) == len(guarded) and not any(rect for rect, in runs)


@pytest.mark.slow
def test_bad_calibration_and_small_budget_are_reported_not_fatal(tmp_path, val):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "junk.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(CalibrationError):
        calibration_batches([str(empty / "junk.jpg")], (640, 640))
    report = search.optimize("default", val, device="cpu", out=tmp_path / "b", calibration=empty, budget_s=1,
                             max_batch=1).to_dict()
    by_name = {c["name"]: c for c in report["candidates"]}
    assert by_name["torch fp32"]["status"] == "passed"  # the reference always runs
    assert all(by_name[n]["status"] == "skipped" and "budget" in by_name[n]["reason"] for n in by_name if n != "torch fp32")
    report = search.optimize("default", val, device="cpu", out=tmp_path / "c", calibration=empty, budget_s=600,
                             max_batch=1).to_dict()
    int8 = [c for c in report["candidates"] if "int8" in c["name"]]
    assert int8 and all(c["status"] == "skipped" and "calibration" in c["reason"] for c in int8)
    assert report["chosen"] and (tmp_path / "c" / "yolotune.json").is_file()


@pytest.mark.slow
def test_interrupt_keeps_what_was_measured(tmp_path, val, monkeypatch):
    real = search._evaluate
    calls = []

    def evaluate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(search, "_evaluate", evaluate)
    report = search.optimize("default", val, device="cpu", out=tmp_path / "d", int8=False, budget_s=600, max_batch=1).to_dict()
    assert any("interrupted" in n for n in report["notes"])
    assert report["chosen"]["name"] == "torch fp32" and (tmp_path / "d" / "yolotune.json").is_file()


@pytest.mark.slow
def test_an_interrupt_before_any_candidate_passed_says_only_that(tmp_path, val, monkeypatch):
    def evaluate(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(search, "_evaluate", evaluate)
    report = search.optimize("default", val, device="cpu", out=tmp_path / "e", int8=False, budget_s=600, max_batch=1).to_dict()
    assert report["interrupted"] and report["chosen"] is None
    assert not any("saved" in n and "nothing saved" not in n for n in report["notes"]), report["notes"]
    assert any("interrupted" in n and "nothing saved" in n for n in report["notes"]), report["notes"]
    assert not (tmp_path / "e" / "yolotune.json").exists()


def test_a_stop_event_ends_the_search_before_the_next_candidate(tmp_path, val):
    """A signal's event stops the search even where its KeyboardInterrupt was swallowed (a finalizer's)."""
    import threading

    stop = threading.Event()
    stop.set()
    report = search.optimize("default", val, device="cpu", out=tmp_path / "s", int8=False, budget_s=600, stop=stop)
    assert report.interrupted and report.chosen is None and all(not c.result for c in report.candidates)
    assert any("nothing saved" in n for n in report.notes) and not (tmp_path / "s" / "yolotune.json").exists()


def test_an_interrupt_while_preparing_data_ends_cleanly(tmp_path, val, monkeypatch):
    def dataset(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(search, "_dataset", dataset)
    report = search.optimize("default", None, device="cpu", out=tmp_path / "f", budget_s=600)
    assert report.interrupted and report.chosen is None and report.candidates == []
    saved = json.loads((tmp_path / "f" / "report.json").read_text())
    assert saved == json.loads(json.dumps(report.to_dict())) and saved["interrupted"] is True


@pytest.mark.slow
def test_progress_names_each_candidate_n_of_total(tmp_path, val):
    said = []
    search.optimize("default", val, device="cpu", out=tmp_path / "g", budget_s=1, max_batch=1, progress=said.append)
    numbered = [m for m in said if m.startswith("candidate ")]
    assert numbered and numbered[0].startswith("candidate 1 of "), said
    total = int(numbered[0].split(" of ")[1].split(":")[0])
    assert total >= 2


def test_cli_errors(tmp_path):
    res = CliRunner().invoke(app, ["optimize", "default", "--device", "cpu", "--objective", "fastest", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "objective must be one of" in res.output
    res = CliRunner().invoke(app, ["optimize", "default", "--device", "cpu", "--canvas", "wide", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "canvas must be one of" in res.output
    res = CliRunner().invoke(app, ["optimize", "default", "--device", "cpu", "--data", str(tmp_path / "missing"),
                                   "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "annotations.json" in res.output


@pytest.mark.slow
def test_a_failing_candidate_is_reported_and_its_fallback_runs(tmp_path, val, monkeypatch):
    from yolotune.options import DetectorOptions
    from yolotune.tune.candidates import Candidate
    from yolotune.tune.files import CandidateFiles

    def space(device_type, compile=True, int8=True, budget_s=120.0):
        return [Candidate("torch fp32", DetectorOptions(precision="fp32"), reference=True),
                Candidate("unexportable", DetectorOptions(precision="fp32")),  # its export fails (below)
                Candidate("fallback", DetectorOptions(precision="fp32", rect=False), fallback_for="unexportable"),
                Candidate("spare", DetectorOptions(precision="fp32"), fallback_for="torch fp32")]

    real = CandidateFiles.for_candidate

    def for_candidate(self, cand):
        if cand.name == "unexportable":
            raise RuntimeError("the exporter cannot build this engine")
        return real(self, cand)

    monkeypatch.setattr(search, "search_space", space)
    monkeypatch.setattr(CandidateFiles, "for_candidate", for_candidate)
    report = search.optimize("default", val, device="cpu", out=tmp_path / "f", budget_s=600, max_batch=1, refine=False).to_dict()
    by = {c["name"]: c for c in report["candidates"]}
    assert by["unexportable"]["status"] == "failed" and "cannot build" in by["unexportable"]["reason"]
    assert by["fallback"]["status"] == "passed" and by["spare"]["status"] == "not needed"
    assert report["chosen"]["name"] in ("torch fp32", "fallback")


def test_candidates_are_timed_at_the_deployed_threshold():
    """The guard validates at confidence 0.001; the timing runs at the threshold the artifact will run at."""
    from types import SimpleNamespace

    from yolotune.ops.postprocess import PostprocessConfig
    from yolotune.tune.batch import as_deployed

    det = SimpleNamespace(post=PostprocessConfig(conf=0.001, topk=512))
    with as_deployed(det):
        assert det.post.conf == 0.25 and det.post.topk == 512
    assert det.post.conf == 0.001


@pytest.mark.slow
def test_camera_frames_are_tuned_on_their_own_canvas(tmp_path, val):
    """Validation images all of one size (a camera's): every candidate runs on their least-padded canvas and the
    artifact keeps it; mixed sizes keep the square canvas."""
    from yolotune.data.synth import SynthConfig
    from yolotune.data.validate import load_dataset
    from yolotune.assets import resolve

    model = Path(resolve("default"))
    assert search._camera_canvas(load_dataset(val)[0], model) is None  # mixed sizes
    frames = write_dataset(tmp_path / "cam", 4, seed=3, cfg=SynthConfig(sizes=((360, 640),)), workers=1)
    assert search._camera_canvas(load_dataset(frames)[0], model) == ((360, 640), (384, 640))
    square = write_dataset(tmp_path / "sq", 2, seed=3, cfg=SynthConfig(sizes=((640, 640),)), workers=1)
    assert search._camera_canvas(load_dataset(square)[0], model) is None  # no smaller than the model's own

    report = search.optimize("default", frames, device="cpu", out=tmp_path / "a", int8=False, budget_s=600,
                             max_batch=1, refine=False).to_dict()
    assert report["canvas"] == {"images": [360, 640], "imgsz": [384, 640]}
    assert any("all 640x360" in n for n in report["notes"])
    assert all(c["options"]["imgsz"] == [384, 640] for c in report["candidates"])
    assert read_artifact(tmp_path / "a").options.imgsz == (384, 640)
    with Detector(str(tmp_path / "a"), device="cpu") as det:
        assert det.imgsz == (384, 640)
        results = list(det.predict(sorted(str(p) for p in (frames / "images").iterdir())))
        assert len(results) == 4 and all(r.ok for r in results)
    report = search.optimize("default", frames, device="cpu", out=tmp_path / "b", int8=False, budget_s=600,
                             max_batch=1, refine=False, canvas="square").to_dict()
    assert "canvas" not in report and all("imgsz" not in c["options"] for c in report["candidates"])
