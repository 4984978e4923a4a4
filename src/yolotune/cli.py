"""Command line: parses, calls the library, prints. No logic of its own beyond exit codes.

Exit codes: 0 every input succeeded; 3 some inputs failed (each has an error record); 2 usage or model error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from yolotune.cli_shared import EXIT_FAILURES as EXIT_INPUT_FAILURES
from yolotune.cli_shared import (EXIT_OK, EXIT_SIGNALS, GPUS_PER_ACTOR, RAY_ACTORS, TRUST_MODEL, VIDEO_DECODE,
                                 LineProgress, console, err, output_file, output_folder, plain_help, stop_on_signals,
                                 trust_models)
from yolotune.cli_shared import fail as _fail
from yolotune.report.terminal import print_predict_summary

app = typer.Typer(add_completion=False, no_args_is_help=True, help="yolotune: YOLO detection as fast as the hardware allows.")


def _progress(disable: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=True, disable=disable,
    )


def run_predict(detector, sources: list[str], out: Path, formats: list[str], quiet: bool = False,
                recursive: bool = False) -> dict:
    """``predict_to_sinks`` with progress on stderr (a bar on a terminal, else a line every few seconds) and
    SIGINT/SIGTERM ending it cleanly: every output written for what was done."""
    from yolotune.pipeline.run import predict_to_sinks

    with stop_on_signals() as stop:
        if quiet:
            return predict_to_sinks(detector, sources, out, formats, recursive, stop)
        if not err.is_terminal:
            return predict_to_sinks(detector, sources, out, formats, recursive, stop, LineProgress("detecting"))
        with _progress(disable=False) as bar:
            task = bar.add_task("detecting", total=None, rate="")

            def show(done: int, total: int | None, seconds: float) -> None:
                bar.update(task, completed=done, total=total, rate=f"{done / max(seconds, 1e-9):,.0f} img/s")

            return predict_to_sinks(detector, sources, out, formats, recursive, stop, show)


@app.command()
def predict(
    model: str = typer.Argument(..., metavar="MODEL", help="Model: default, Ultralytics .pt / .yaml (needs yolotune\\[ultralytics]), ONNX "
                                           "export, or an artifact directory from yolotune optimize."),
    sources: list[str] = typer.Argument(..., metavar="SOURCES", help="Images, directories, globs, .txt lists of paths, video files."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or N."),
    batch: Optional[int] = typer.Option(None, min=1, help="Images per batch (default 16, or the artifact's)."),
    conf: float = typer.Option(0.25, min=0.0, max=1.0, help="Confidence threshold."),
    iou: float = typer.Option(0.7, min=0.0, max=1.0, help="NMS IoU threshold."),
    max_det: int = typer.Option(300, min=1, help="Maximum detections per image."),
    imgsz: Optional[int] = typer.Option(None, help="Input size (default: the model's)."),
    out: Path = typer.Option(Path("yolotune-out"), help="Output directory."),
    formats: list[str] = typer.Option(["jsonl"], "--format", "-f", help="jsonl, coco, images, video (repeat for several)."),
    half: Optional[bool] = typer.Option(None, "--half/--no-half", help="FP16 on CUDA (default on).", metavar=""),
    rect: Optional[bool] = typer.Option(None, "--rect/--no-rect", help="Minimal stride padding for same-size batches "
                                        "(default: on, except for compiled engines, where each canvas is a compile).", metavar=""),
    cuda_graph: Optional[bool] = typer.Option(None, "--cuda-graph/--no-cuda-graph", help="Replay model + NMS as CUDA graphs (default on).", metavar=""),
    gpu_decode: bool = typer.Option(True, "--gpu-decode/--cpu-decode", help="Decode JPEGs with nvJPEG on CUDA.", metavar=""),
    video_decode: str = VIDEO_DECODE,
    jpeg_decode: Optional[str] = typer.Option(None, help="Where JPEGs are decoded: hardware (the GPU's NVJPG engines, "
                                              "off the SMs, yolotune\\[jpeg]; shared with CUDA nvJPEG by their measured "
                                              "rates), cuda (CUDA nvJPEG), cpu (Pillow), auto (CUDA nvJPEG on a GPU, "
                                              "else Pillow)."),
    hardware_share: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="With hardware JPEG decoding: the "
                                                   "share NVJPG takes, the rest CUDA nvJPEG (default: by their "
                                                   "measured rates; 1: NVJPG only)."),
    runtime: Optional[str] = typer.Option(None, help="ONNX models: onnxruntime, or openvino (yolotune\\[openvino]; "
                                          "the CPU). Default: an artifact's own, else ONNX Runtime."),
    compile: Optional[str] = typer.Option(None, help="Compile the model: inductor (torch.compile), aoti (AOTInductor, "
                                          "packaged and cached on disk; load-checked in a child process first: "
                                          "its loader can crash), none."),
    preprocess: str = typer.Option("auto", help="Where to decode + letterbox: gpu (nvJPEG, batched on the device), cpu (threads; Ultralytics-identical pixels), auto."),
    workers: Optional[int] = typer.Option(None, help="CPU decode threads."),
    agnostic: bool = typer.Option(False, help="Class-agnostic NMS.", metavar=""),
    end2end: Optional[bool] = typer.Option(None, "--end2end/--no-end2end", help="NMS-free head of YOLOv10/YOLO26 models (default: as the checkpoint says).", metavar=""),
    seed: int = typer.Option(0, help="Seed for random weights of .yaml models."),
    class_bias: Optional[float] = typer.Option(None, help="Random-init models only: classification bias (e.g. -4) so they emit boxes."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Search directories' subfolders too.", metavar=""),
    max_image_pixels: Optional[int] = typer.Option(None, min=0, help="Largest picture decoded, in pixels (default: "
                                                   "Pillow's decompression-bomb limit, 89,478,485; 0: no limit)."),
    json_output: bool = typer.Option(False, "--json", help="Print the run summary as JSON on stdout.", metavar=""),
    ray: Optional[str] = typer.Option(None, "--ray", metavar="ADDRESS", help="Run on Ray (yolotune\\[ray]): local "
                                      "(a cluster on this machine), auto or HEAD:6379 (a running one)."),
    actors: Optional[int] = RAY_ACTORS,
    gpus_per_actor: float = GPUS_PER_ACTOR,
    resume: bool = typer.Option(False, "--resume", help="With --ray: skip inputs already in --out's detections.jsonl.",
                                metavar=""),
    trust_model: bool = TRUST_MODEL,
) -> None:
    """Detect objects in images and videos; write JSONL / COCO / annotated images."""
    from yolotune import Detector, ModelLoadError
    from yolotune.io.sinks import sink_names

    trust_models(trust_model)
    bad = [f for f in formats if f not in sink_names()]
    if bad:
        _fail(f"unknown --format {', '.join(bad)}; choose from {', '.join(sink_names())}")
    output_folder(out)
    try:
        # options left unset are not passed, so an artifact's tuned values (batch, precision, graph) apply
        unset = dict(half=half, batch=batch, imgsz=imgsz, cuda_graph=cuda_graph, workers=workers, class_bias=class_bias,
                     end2end=end2end, compile=compile, rect=rect, runtime=runtime, jpeg_decode=jpeg_decode,
                     hardware_share=hardware_share)
        overrides = dict(device=device, conf=conf, iou=iou, max_det=max_det, gpu_decode=gpu_decode, video_decode=video_decode,
                         preprocess=preprocess, agnostic=agnostic, return_images=bool({"images", "video"} & set(formats)),
                         seed=seed, max_image_pixels=max_image_pixels, **{k: v for k, v in unset.items() if v is not None})
        if ray is not None:
            _predict_on_ray(model, sources, out, formats, overrides, ray, actors, gpus_per_actor, resume, recursive,
                            json_output)
            return
        detector = Detector(model, **overrides)
    except (ModelLoadError, ValueError) as e:
        _fail(str(e))
    from yolotune.interpreter import tuned_for_threads

    with detector, tuned_for_threads():  # this process is ours: its threads share the GIL better this way
        summary = run_predict(detector, sources, out, formats, recursive=recursive)
    _finish_predict(summary, json_output)


def _finish_predict(summary, json_output: bool) -> None:
    """Print predict's summary (or its JSON) and exit with what it says: failed inputs, or the signal that stopped it."""
    from rich.markup import escape

    for warning in summary.warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}")
    if json_output:
        sys.stdout.write(json.dumps(summary.to_dict(), indent=2, ensure_ascii=False) + "\n")
    else:
        print_predict_summary(summary, console())
    if summary.interrupted:
        raise typer.Exit(EXIT_SIGNALS.get(summary.interrupted, EXIT_INPUT_FAILURES))
    raise typer.Exit(EXIT_INPUT_FAILURES if summary.failed else EXIT_OK)


def _predict_on_ray(model, sources, out, formats, overrides, address, actors, gpus_per_actor, resume, recursive,
                    json_output) -> None:
    from yolotune.scale.cluster import RayUnavailable
    from yolotune.scale.predict import predict_on_ray

    try:
        with stop_on_signals() as stopped:
            summary = predict_on_ray(model, sources, out, formats, overrides, address=address, actors=actors,
                                     gpus_per_actor=gpus_per_actor, resume=resume, recursive=recursive, stop=stopped,
                                     progress=LineProgress("detecting"))
    except (RayUnavailable, ValueError) as e:
        _fail(str(e))
    _finish_predict(summary, json_output)


@app.command()
def demo(
    out: Path = typer.Option(Path("yolotune-demo"), help="Where to write the demo outputs."),
    device: str = typer.Option("auto", help="auto, cpu, cuda."),
    images: int = typer.Option(8, min=1, help="Sample images to generate."),
) -> None:
    """Generate sample images and a clip, run the embedded default model on them, write annotated outputs."""
    from yolotune.demo import run_demo

    output_folder(out)
    try:
        summary = run_demo(out, device=device, n_images=images, console=console())
    except Exception as e:  # the demo must explain itself, never dump a traceback on a fresh machine
        _fail(f"demo failed: {type(e).__name__}: {e}")
    raise typer.Exit(EXIT_INPUT_FAILURES if summary.failed else EXIT_OK)


@app.command()
def val(
    model: str = typer.Argument(..., metavar="MODEL", help="Model to validate (.pt, .yaml, .onnx)."),
    data: Path = typer.Argument(..., metavar="DATA", help="Dataset folder with annotations.json and images/ (yolotune data synth)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda."),
    batch: int = typer.Option(16, min=1),
    imgsz: Optional[int] = typer.Option(None),
    conf: float = typer.Option(0.25, help="Operating threshold for precision/recall (mAP uses all detections >= 0.001)."),
    half: Optional[bool] = typer.Option(None, "--half/--no-half", metavar=""),
    json_output: bool = typer.Option(False, "--json", metavar=""),
    trust_model: bool = TRUST_MODEL,
) -> None:
    """COCO mAP50-95, mAP50, per-class AP, precision and recall of a model on a labelled dataset."""
    from yolotune import Detector, ModelLoadError
    from yolotune.data.validate import validate

    trust_models(trust_model)
    try:
        det = Detector(model, device=device, batch=batch, imgsz=imgsz, half=half, conf=0.001, max_det=300)
        metrics = validate(det, data, conf=conf)
    except (ModelLoadError, ValueError, FileNotFoundError) as e:
        _fail(str(e))
    if json_output:
        sys.stdout.write(json.dumps(metrics.to_dict(), indent=2) + "\n")
        return
    table = Table(title=f"yolotune val: {model} on {data}")
    for col in ("class", "AP50-95"):
        table.add_column(col)
    for name, ap in metrics.per_class_ap.items():
        table.add_row(name, f"{ap:.3f}")
    table.add_row("[bold]all[/]", f"[bold]{metrics.map50_95:.3f}[/]")
    screen = console()
    screen.print(table)
    screen.print(f"mAP50 {metrics.map50:.3f}; at conf {conf}: precision {metrics.precision:.3f}, recall {metrics.recall:.3f} "
                  f"({metrics.backend})")


@app.command()
def export(
    model: str = typer.Argument(..., metavar="MODEL", help="Model to export: default, .pt or .yaml."),
    out: Path = typer.Option(..., help="Output .onnx path."),
    imgsz: int = typer.Option(640, help="Input size (square)."),
    dynamic_batch: bool = typer.Option(True, "--dynamic-batch/--static-batch", metavar=""),
    end2end: bool = typer.Option(False, "--end2end/--raw", help="Put box decoding and NMS in the graph: [B, max_det, 6] out.", metavar=""),
    iou: float = typer.Option(0.7, help="NMS IoU threshold (with --end2end)."),
    max_det: int = typer.Option(300, help="Detections per image (with --end2end)."),
    trust_model: bool = TRUST_MODEL,
) -> None:
    """Export a model to ONNX (with Ultralytics-style metadata) for onnxruntime."""
    from yolotune import ModelLoadError, load_model
    from yolotune.models.export import export_onnx

    trust_models(trust_model)
    output_file(out)
    try:
        loaded = load_model(model)
    except ModelLoadError as e:
        _fail(str(e))
    if loaded.spec.format != "ultralytics":
        _fail(f"{model}: only PyTorch models can be exported (this one is {loaded.spec.format})")
    try:
        path = export_onnx(loaded, out, imgsz=(imgsz, imgsz), dynamic_batch=dynamic_batch, end2end=end2end, iou=iou,
                           max_det=max_det)
    except ValueError as e:
        _fail(f"{model}: {e}")
    layout = "end2end" if end2end else loaded.spec.layout
    console().print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, layout {layout})")


data_app = typer.Typer(help="Generated detection data.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("synth")
def data_synth(
    out: Path = typer.Option(..., help="Output directory (images/, labels/, annotations.json, dataset.yaml)."),
    n: int = typer.Option(1000, min=1, help="Number of images."),
    seed: int = typer.Option(0, help="Dataset seed: image i depends only on (seed, i)."),
    workers: Optional[int] = typer.Option(None, help="Processes."),
    video_frames: int = typer.Option(0, min=0, help="Also write video.mp4 (+ video.json ground truth) with this many "
                                                    "frames (at --size; 640x360 without it, 1280x720 with --camera)."),
    camera: bool = typer.Option(False, "--camera", help="The clip encoded like a camera's (sensor noise, a slow pan, a "
                                                        "keyframe a second, no B-frames, 3 Mbit/s at 720p30), so that "
                                                        "decoding it costs what a camera's stream does.", metavar=""),
    size: Optional[str] = typer.Option(None, help="WIDTHxHEIGHT of every image (a camera's frames, for `optimize "
                                                  "--data`); default: five sizes mixed."),
) -> None:
    """Generate a detection dataset: 10 classes of objects on real photographs, YOLO and COCO labels."""
    from yolotune.data.synth import SynthConfig, write_dataset, write_video

    output_folder(out)
    cfg = SynthConfig()
    if size is not None:
        try:
            w, h = (int(v) for v in size.lower().split("x"))
            if w < 32 or h < 32:
                raise ValueError
        except ValueError:
            _fail(f"--size must look like 1280x720 (each side at least 32), not {size!r}")
        cfg = SynthConfig(sizes=((h, w),))
    with _progress(disable=not err.is_terminal) as progress:
        task = progress.add_task("generating", total=n, rate="")
        write_dataset(out, n, seed=seed, cfg=cfg, workers=workers,
                      progress=lambda done, total: progress.update(task, completed=done))
    if video_frames:
        # the clip at --size; a camera's at 720p unless --size says otherwise
        hw = cfg.sizes[0] if size is not None else (720, 1280) if camera else (360, 640)
        write_video(out / "video.mp4", frames=video_frames, size=hw, seed=seed, camera=camera)
    console().print(f"wrote {n} images to {out.resolve()}" + (f" and a {video_frames}-frame clip" if video_frames else ""))


from yolotune.cli_analysis import compare_command, diagram_command, profile_command, report_command  # noqa: E402

app.command("profile")(profile_command)
app.command("report")(report_command)
app.command("diagram")(diagram_command)
app.command("compare")(compare_command)

from yolotune.cli_optimize import optimize_command  # noqa: E402

app.command("optimize")(optimize_command)

from yolotune.cli_serve import plan_command, run_command  # noqa: E402

app.command("run")(run_command)
app.command("plan")(plan_command)
plain_help(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
