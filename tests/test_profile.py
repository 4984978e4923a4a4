"""Profiler: model split from structure, kernel attribution, diagnosis from data, trace, report, diagram, compare."""

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from yolotune.cli import app
from yolotune.models import load_model
from yolotune.profile.diagnose import PipelineModel, diagnose
from yolotune.profile.kernels import attribute
from yolotune.profile.sections import SectionRunner, describe_layers
from yolotune.report.compare import compare_profiles

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "profiles"


@pytest.fixture(scope="module")
def cpu_profile(tmp_path_factory):
    out = tmp_path_factory.mktemp("profile")
    # a process of its own, as a user runs it: what the libraries print on stderr is seen too
    res = subprocess.run([sys.executable, "-m", "yolotune.cli", "profile", "default", "--device", "cpu", "--pipeline",
                          "plain", "--images", "4", "--repeats", "2", "--max-batch", "2", "--verify", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    return out, json.loads((out / "profile.json").read_text()), res.stdout + res.stderr


def test_a_cpu_profile_speaks_in_cpu_units_and_shows_no_gpu_columns(cpu_profile):
    out, p, output = cpu_profile
    assert "USDT" not in output and "profiler_start" not in output  # the profiler library's own log lines
    # no figure that rounds to nothing in the GPU's units ("2.10 GB/s" is fine, "0 GB/s" is not)
    assert not re.search(r"(?<![\d.])0(\.0+)? (TFLOP|GB)/s", output), output
    model = next(f for f in p["findings"] if f["kind"] in ("compute", "memory_bandwidth"))
    assert "GFLOP/s" in model["evidence"] and "TFLOP/s" not in model["evidence"]
    assert "GPU busy" not in output and "GPU ms" not in output and "launches" not in output
    assert "op calls" in output  # on the CPU, operator calls stand in for launches, and are named so
    html = (out / "report.html").read_text()
    assert "GPU busy ms" not in html and "launch API ms" not in html and "GFLOP/s" in html
    assert "0 TFLOP/s" not in html


def test_cli_profile_on_cpu_measures_every_stage(cpu_profile):
    out, p, output = cpu_profile
    stages = [s["stage"] for s in p["stages"]]
    assert stages == ["read", "decode", "preprocess", "backbone", "neck", "head", "nms", "d2h", "sink"]
    assert all(s["ms_per_image"] > 0 and len(s["samples"]) == 8 for s in p["stages"])  # 4 images x 2 passes, batch 1
    assert p["kernels"]["backbone"]["launches"] > 20  # CPU: operator calls per image stand in for launches
    assert p["e2e"]["images_per_s"] > 0 and len(p["e2e"]["samples"]) == 2 and p["e2e"]["errors"] == 0
    assert [q["batch"] for q in p["sweep"]["points"]] == [1, 2]
    assert {q["section"] for q in p["layers"]} == {"backbone", "neck", "head"} and len(p["layers"]) == 23
    total_gflops = sum(q["flops"] for q in p["layers"]) / 1e9
    h, w = p["roofline"]["input_hw"]
    assert total_gflops == pytest.approx(8.1 * h * w / 640**2, rel=0.08)  # yolov8n: 8.1 GFLOPs at 640x640
    assert p["roofline"]["peaks"]["source"] == "measured"
    assert "Stages" in output and "end to end" in output


def test_trace_is_valid_chrome_trace_json(cpu_profile):
    out, p, _ = cpu_profile
    trace = json.loads((out / "trace.json").read_text())
    spans = [e for e in trace["traceEvents"] if e.get("cat") == "stage"]
    assert len(spans) == len(p["timeline"]) > 0
    assert all(e["ph"] == "X" and e["dur"] >= 0 and e["ts"] >= 0 for e in spans)
    names = {e["args"]["name"] for e in trace["traceEvents"] if e.get("name") == "process_name"}
    assert "profile phases" in names


def test_html_report_is_self_contained(cpu_profile):
    out, p, _ = cpu_profile
    text = (out / "report.html").read_text()
    assert text.count("<svg") >= 4  # stages, waterfall, sweep, roofline, diagram
    assert "Findings" in text and "Slowest layers" in text and "Architecture" in text
    # nothing fetched: no scripts, stylesheets or remote images (SVG namespace URIs are names, not requests)
    assert not any(tag in text for tag in ("<script", "<link", "@import", 'src="http', "<img"))


def test_report_renders_a_saved_profile_again(cpu_profile, tmp_path):
    """Reports are made by a command from profile.json, so none need be kept: the same page as profile wrote."""
    out, _, _ = cpu_profile
    res = CliRunner().invoke(app, ["report", str(out / "profile.json"), "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "r" / "report.html").read_text()
    assert page == (out / "report.html").read_text()
    assert json.loads((tmp_path / "r" / "trace.json").read_text())["traceEvents"]
    (tmp_path / "bad.json").write_text("{}")
    res = CliRunner().invoke(app, ["report", str(tmp_path / "bad.json"), "--out", str(tmp_path / "r2")])
    assert res.exit_code == 2 and "not a yolotune profile" in res.output


@pytest.mark.parametrize("cfg,head", [("yolov8n.yaml", "Detect"), ("yolo11n.yaml", "Detect"), ("yolov10n.yaml", "v10Detect")])
def test_sections_come_from_the_model_structure(cfg, head):
    net = load_model(cfg).runnable.model.eval()
    layers = describe_layers(net)
    n_backbone = len(net.yaml["backbone"])
    assert [q.section for q in layers[:n_backbone]] == ["backbone"] * n_backbone
    assert layers[-1].section == "head" and layers[-1].type == head
    assert all(q.section == "neck" for q in layers[n_backbone:-1])
    x = torch.rand(1, 3, 320, 320)
    with torch.inference_mode():
        ref = net(x)
        ref = ref[0] if isinstance(ref, (tuple, list)) else ref
        assert torch.equal(SectionRunner(net).run(x), ref)


def test_kernel_attribution_follows_correlation_ids():
    ann = lambda name, ts, dur: {"ph": "X", "cat": "user_annotation", "name": name, "ts": ts, "dur": dur, "tid": 1}  # noqa: E731
    rt = lambda name, ts, corr: {"ph": "X", "cat": "cuda_runtime", "name": name, "ts": ts, "dur": 2, "tid": 1,  # noqa: E731
                                 "args": {"correlation": corr}}
    k = lambda ts, dur, corr: {"ph": "X", "cat": "kernel", "name": "k", "ts": ts, "dur": dur, "tid": 7,  # noqa: E731
                               "args": {"correlation": corr}}
    events = [ann("backbone", 0, 100), ann("nms", 100, 50),
              rt("cudaLaunchKernel", 10, 1), rt("cudaLaunchKernel", 20, 2), rt("cudaGraphLaunch", 110, 3),
              rt("cudaStreamSynchronize", 120, 4),  # not a launch
              k(30, 40, 1), k(80, 10, 2), k(115, 5, 3), k(121, 5, 3)]  # graph kernels share the launch's id
    stats = attribute(events, images=2, cuda=True)
    assert stats["backbone"].launches == 1.0 and stats["backbone"].kernels == 1.0
    assert stats["backbone"].gpu_busy_ms == pytest.approx(0.025)  # (40 + 10) us / 2 images
    assert stats["nms"].launches == 0.5 and stats["nms"].graph_launches == 0.5 and stats["nms"].kernels == 1.0


def test_pipeline_model_is_calibrated_on_the_measured_rate():
    m = PipelineModel({"read": 1.0, "decode": 4.0, "backbone": 3.0, "nms": 1.0})
    assert m.producer() == 4.0 and m.consumer() == 4.0  # reading runs ahead in its own thread
    cal = m.calibrated(1000.0 / 6.0)  # measured 6 ms/image = 4 + a * 4
    assert cal.overlap_loss == pytest.approx(0.5) and cal.images_per_s() == pytest.approx(1000 / 6)
    assert cal.with_changes({"decode": 1.0}).ms_per_image() == pytest.approx(4.0 + 0.5 * 1.0)


def _stored(name: str) -> dict:
    return json.loads((RESULTS / f"profile_{name}.json").read_text())


@pytest.mark.parametrize("model", ["yolov8n", "yolov8m"])
def test_stored_h100_profiles_find_the_documented_bottlenecks(model):
    """BASELINE.md's bottlenecks of the plain pipeline are found from the stored H100 data, and gone when optimized."""
    plain = {f.kind: f for f in diagnose(_stored(f"{model}_plain"))}
    assert {"launch_overhead", "batch_size"} <= set(plain)
    assert "host_bound_preprocess" in plain or "nms_share" in plain
    assert plain["launch_overhead"].predicted_gain > 1.2 and plain["launch_overhead"].options["cuda_graph"] is True
    optimized = {f.kind for f in diagnose(_stored(f"{model}_optimized"))}
    assert not optimized & {"launch_overhead", "host_bound_preprocess", "nms_share", "batch_size"}


def test_diagnosis_follows_the_data_not_fixed_text():
    p = _stored("yolov8n_plain")
    launch = next(f for f in diagnose(p) if f.kind == "launch_overhead")
    faster = copy.deepcopy(p)
    for s in ("backbone", "neck", "head"):
        faster["kernels"][s]["gpu_busy_ms"] = next(q["ms_per_image_p50"] for q in p["stages"] if q["stage"] == s)
    assert "launch_overhead" not in {f.kind for f in diagnose(faster)}  # GPU-bound now: no launch finding
    assert f"{p['launches_per_image'] - p['kernels']['d2h']['launches'] - p['kernels']['h2d']['launches']:.0f}" in launch.evidence


def test_compare_flags_only_changes_beyond_noise(cpu_profile):
    _, p, _ = cpu_profile
    p = copy.deepcopy(p)
    for s in p["stages"]:  # the measured mean with a known 2% spread: a loaded machine's outliers are not the subject
        if s["stage"] == "backbone":
            s["samples"] = [s["ms_per_image"] * (1 + 0.02 * (-1) ** i) for i in range(max(4, len(s["samples"])))]
            s.pop("sample_images", None)
    slower = copy.deepcopy(p)
    for s in slower["stages"]:
        if s["stage"] == "backbone":
            s["samples"] = [v * 2 for v in s["samples"]]
            s["ms_per_image"] *= 2
    c = compare_profiles(p, slower)
    verdicts = {s["stage"]: s["verdict"] for s in c["stages"]}
    assert verdicts["backbone"] == "regression"
    assert all(v == "within noise" for k, v in verdicts.items() if k != "backbone")
    assert c["e2e"]["verdict"] == "within noise"


def test_compare_agrees_with_profile_per_image_when_batches_differ(cpu_profile):
    _, p, _ = cpu_profile
    for s in p["stages"]:  # the profile's own figure is weighted by images, and so is compare's
        c = compare_profiles(p, p)
        row = next(r for r in c["stages"] if r["stage"] == s["stage"])
        assert row["a"] == pytest.approx(s["ms_per_image"], rel=1e-6)
    mixed = copy.deepcopy(p)  # a batch of 8 at 1 ms/image and a batch of 1 at 9 ms/image: 17 ms / 9 images
    for s in mixed["stages"]:
        s.update(samples=[1.0, 9.0], sample_images=[8, 1], ms_per_image=17 / 9)
    row = compare_profiles(mixed, mixed)["stages"][0]
    assert row["a"] == pytest.approx(17 / 9) and row["a_n"] == 2


def test_compare_html_describes_each_side_in_words(cpu_profile, tmp_path):
    from yolotune.report.compare import write_comparison_html

    _, p, _ = cpu_profile
    text = write_comparison_html(compare_profiles(p, p), tmp_path / "c.html").read_text()
    assert "{" not in text.split("<body>")[1] and "&#x27;" not in text  # no raw Python dicts
    assert f"batch {p['options']['batch']}" in text and p["device"]["name"] in text


def test_cli_compare_names_the_file_that_is_not_a_profile(cpu_profile, tmp_path):
    out, _, _ = cpu_profile
    (tmp_path / "notes.txt").write_text("no json here")
    res = CliRunner().invoke(app, ["compare", str(out / "profile.json"), str(tmp_path / "notes.txt")],
                             env={"COLUMNS": "300"})
    assert res.exit_code == 2 and str(tmp_path / "notes.txt") in res.output and str(out) not in res.output
    (tmp_path / "other.json").write_text("{}")
    res = CliRunner().invoke(app, ["compare", str(tmp_path / "other.json"), str(out / "profile.json")],
                             env={"COLUMNS": "300"})
    assert res.exit_code == 2 and "other.json" in res.output and "not a yolotune profile" in res.output


def test_cli_compare_and_diagram(cpu_profile, tmp_path):
    out, _, _ = cpu_profile
    res = CliRunner().invoke(app, ["compare", str(out / "profile.json"), str(out / "profile.json"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["e2e"]["verdict"] == "within noise"
    res = CliRunner().invoke(app, ["diagram", "default", "--out", str(tmp_path / "m.svg"), "--profile", str(out / "profile.json")])
    assert res.exit_code == 0, res.output
    text = (tmp_path / "m.svg").read_text()
    assert "<svg" in text and "Detect" in text and "ms" in text


def test_profile_errors_are_clear(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    res = CliRunner().invoke(app, ["profile", "default", str(tmp_path), "--device", "cpu", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "no image or video files" in res.output
    res = CliRunner().invoke(app, ["profile", "default", "--pipeline", "fastest", "--device", "cpu"])
    assert res.exit_code == 2 and "pipeline must be one of" in res.output
    res = CliRunner().invoke(app, ["compare", str(tmp_path / "notes.txt"), str(tmp_path / "notes.txt")])
    assert res.exit_code == 2


@pytest.mark.skipif(not __import__("shutil").which("chromium"), reason="Debian's chromium is not installed")
def test_report_renders_in_headless_chromium(cpu_profile, tmp_path):
    import subprocess

    import numpy as np
    from PIL import Image

    out, _, _ = cpu_profile
    script = Path(__file__).resolve().parents[1] / "scripts" / "report-screenshot"
    subprocess.run([str(script), str(out / "report.html"), str(tmp_path / "shot.png"), "1200x3000"], check=True, timeout=120)
    pixels = np.asarray(Image.open(tmp_path / "shot.png").convert("L"), dtype=np.float32)
    assert pixels.shape == (3000, 1200) and pixels.std() > 20  # text and figures drawn, not a blank page


def test_timing_runs_real_pictures_at_the_detectors_smallest_batch(tmp_path):
    """The sweep's step is timed on letterboxed pictures where given (noise makes other NMS work), and a batch
    smaller than the Detector's smallest runs padded to it, but batch 1 runs as 1 where the Detector has it."""
    from types import SimpleNamespace

    from PIL import Image

    from yolotune.profile.sweep import measure_batch, letterboxed_images

    for i, size in enumerate([(64, 48), (40, 80)]):
        Image.new("RGB", size, (30 * i, 200, 90)).save(tmp_path / f"{i}.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"not a picture")
    paths = [str(tmp_path / n) for n in ("bad.jpg", "0.jpg", "1.jpg")]
    sample = letterboxed_images(paths, (32, 32), torch.device("cpu"))
    assert sample.shape == (2, 3, 32, 32) and 0 <= float(sample.min()) and float(sample.max()) <= 1
    assert letterboxed_images(paths[:1], (32, 32), torch.device("cpu")) is None
    seen = []

    def fake(buckets):
        engine = SimpleNamespace(min_batch=2, input_dtype=torch.float32, channels_last=False)
        return SimpleNamespace(device=torch.device("cpu"), engine=engine, buckets=buckets,
                               step=lambda x, g: seen.append(x.clone()))

    measure_batch(fake([1]), 1, 32, 32, repeats=1, min_seconds=0.0, sample=sample)
    assert {x.shape[0] for x in seen} == {1} and torch.equal(seen[0][0], sample[0])
    seen.clear()
    measure_batch(fake([2, 4]), 1, 32, 32, repeats=1, min_seconds=0.0, sample=sample)
    assert {x.shape[0] for x in seen} == {2} and torch.equal(seen[0], sample)  # padded with the next picture


def test_cudnn_autotunes_only_the_detectors_batch_and_the_batches_the_sweep_times(monkeypatch):
    """A padded bucket (4 frames first, a stream's partial batch) takes cuDNN's heuristics instead of stalling to
    tune one more shape; a batch the sweep times is tuned, as it would be as a Detector's own batch."""
    from yolotune import Detector
    from yolotune.profile.sweep import measure_batch

    det = Detector("default", device="cpu", batch=8, imgsz=64)
    det.device = torch.device("cuda")  # only the flag's logic: nothing here runs a convolution on a GPU
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    seen = []

    class Engine:  # records the flag as each convolution would read it
        input_dtype, channels_last, min_batch = torch.float32, False, 1

        def __call__(self, x):
            seen.append(torch.backends.cudnn.benchmark)
            return x

    monkeypatch.setattr(det, "engine", Engine())
    monkeypatch.setattr("yolotune.pipeline.stages.postprocess", lambda raw, g, post: (raw, g))
    g = torch.zeros(8, 6)
    for b in (8, 4, 8):
        det.detect_step(torch.zeros(b, 3, 64, 64), g[:b])
    assert seen == [True, False, True] and torch.backends.cudnn.benchmark is True
    monkeypatch.setattr(det, "step", lambda x, g: det.detect_step(x, g))
    monkeypatch.setattr(det, "device", torch.device("cpu"))  # the sweep's own device handling: CPU
    measure_batch(det, 2, 64, 64, repeats=1, min_seconds=0.0)
    assert det.autotune_batches == {8, 2}
    det.device = torch.device("cuda")
    seen.clear()
    det.detect_step(torch.zeros(2, 3, 64, 64), g[:2])
    assert seen == [True]
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)  # off stays off at every batch
    seen.clear()
    det.detect_step(torch.zeros(4, 3, 64, 64), g[:4])
    assert seen == [False] and torch.backends.cudnn.benchmark is False


def _video_bound(decoded_on: str, probes: dict) -> dict:
    """The stored optimized profile, as if its inputs were a video whose decoding took most of the producer side."""
    p = _stored("yolov8n_optimized")
    p["inputs"] = {**p["inputs"], "video": "cam.mp4", "video_decode": decoded_on}
    cons = sum(s["ms_per_image_p50"] for s in p["stages"] if s["stage"] in ("backbone", "neck", "head", "nms", "d2h", "sink"))
    for s in p["stages"]:
        if s["stage"] == "decode":
            s["ms_per_image_p50"] = s["ms_per_image"] = 3 * cons
    p["e2e"] = {**p["e2e"], "images_per_s": 1000 / (3.2 * cons)}
    p["probes"] = probes
    return p


def test_diagnosis_names_the_video_decoder_and_what_nvdec_would_change():
    p = _video_bound("cpu", {"video_decode_cpu_ms_per_frame": 2.0, "video_decode_nvdec_ms_per_frame": 0.1})
    f = next(f for f in diagnose(p) if f.kind == "video_decode_bound")
    assert f.options == {"video_decode": "nvdec"} and f.predicted_gain > 1.5
    assert "FFmpeg on the CPU" in f.evidence and "NVDEC 0.10 ms/frame" in f.evidence
    on_nvdec = next(f for f in diagnose(_video_bound("nvdec", {})) if f.kind == "video_decode_bound")
    assert on_nvdec.options == {} and "other NVDEC engines" in on_nvdec.recommendation
    slower = next(f for f in diagnose(_video_bound("cpu", {"video_decode_nvdec_ms_per_frame": 99.0}))
                  if f.kind == "video_decode_bound")
    assert slower.options == {} and "NVDEC is not faster here" in slower.recommendation
    images = _stored("yolov8n_optimized")  # no video: no such finding
    assert "video_decode_bound" not in {f.kind for f in diagnose(images)}


def test_profile_of_a_video_decodes_its_frames_in_the_decode_stage(tmp_path):
    from yolotune.data.synth import write_video
    from yolotune.profile.run import profile

    clip = write_video(tmp_path / "cam.mp4", frames=12, size=(144, 256), fps=10, seed=2, camera=True)
    r = profile("default", [str(clip)], device="cpu", images=8, repeats=1, sweep=False, kernels=False, max_batch=2,
                batch=4).to_dict()
    stages = {s["stage"]: s for s in r["stages"]}
    assert r["inputs"]["video"] == str(clip) and r["inputs"]["video_decode"] == "cpu"
    assert stages["decode"]["ms_per_image"] > 0 and "read" not in stages
    assert r["probes"]["video_decode_cpu_ms_per_frame"] > 0 and "video_decode_nvdec_ms_per_frame" not in r["probes"]
    assert r["e2e"]["images"] % 12 == 0 and r["e2e"]["images_per_s"] > 0  # the whole video, as often as 1.5 s takes


def _sharing_sms(probes: dict, jpeg_decode: str = "cuda", **options) -> dict:
    """The stored optimized profile, as if CUDA nvJPEG's kernels took as long on the SMs as the model's and the
    pipeline ran at the rate of the two in turn."""
    p = _stored("yolov8n_optimized")
    p["options"] = {**p["options"], "jpeg_decode": jpeg_decode, **options}
    model_busy = sum(p["kernels"][s]["gpu_busy_ms"] for s in ("backbone", "neck", "head", "nms"))
    p["kernels"]["decode"]["gpu_busy_ms"] = model_busy
    p["e2e"] = {**p["e2e"], "images_per_s": 1000 / (2.05 * model_busy)}
    p["probes"] = probes
    return p


def test_diagnosis_finds_decode_sharing_the_sms_and_recommends_the_hardware_decoders():
    f = next(f for f in diagnose(_sharing_sms({"hardware_decode_ms": 0.01})) if f.kind == "decode_shares_sms")
    assert f.options == {"jpeg_decode": "hardware"} and f.predicted_gain is not None
    assert "take turns" in f.evidence and "NVJPG" in f.recommendation
    missing = _sharing_sms({"hardware_decode_unavailable": "nvImageCodec is not usable"})
    f = next(f for f in diagnose(missing) if f.kind == "decode_shares_sms")
    assert f.options == {} and "nvImageCodec is not usable" in f.recommendation and "yolotune[jpeg]" in f.recommendation
    kinds = lambda p: {f.kind for f in diagnose(p)}  # noqa: E731
    assert "decode_shares_sms" not in kinds(_sharing_sms({}, jpeg_decode="hardware"))  # decoded off the SMs already
    fast = _sharing_sms({})
    fast["e2e"]["images_per_s"] *= 3  # well above the in-turn bound: not the limit
    assert "decode_shares_sms" not in kinds(fast)
    assert "decode_shares_sms" not in kinds(_stored("yolov8n_optimized"))  # a small decode share


def test_the_hardware_decode_probe_says_why_there_is_none():
    from types import SimpleNamespace

    from yolotune.profile import probes

    ms, why = probes.hardware_decode(SimpleNamespace(device=torch.device("cpu")), [], 8)
    assert ms is None and "CUDA device" in why
    if not jpeg_hardware_installed():
        ms, why = probes.hardware_decode(SimpleNamespace(device=torch.device("cuda")), [], 8)
        assert ms is None and "yolotune[jpeg]" in why


def jpeg_hardware_installed() -> bool:
    from yolotune.io import jpeg_hardware

    return jpeg_hardware.available()
