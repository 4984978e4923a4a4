"""The ``optimize`` command (registered on the main app)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from yolotune.cli_shared import (EXIT_SIGNALS, TRUST_MODEL, console, fail, output_folder, stage_progress, stop_on_signals,
                                 trust_models)


def optimize_command(
    model: str = typer.Argument(..., metavar="MODEL", help="Model: default, Ultralytics .pt / .yaml, or ONNX."),
    data: Optional[Path] = typer.Option(None, help="Validation data: a dataset folder (annotations.json + images/) or a "
                                                    "folder of images (then the FP32 model's detections are the labels). "
                                                    "Default: generated scenes."),
    out: Path = typer.Option(Path("yolotune-artifact"), help="Artifact directory (model, yolotune.json, report)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    objective: str = typer.Option("throughput", help="throughput or latency (batch 1)."),
    latency_ms: Optional[float] = typer.Option(None, help="Max latency per batch when choosing the batch size."),
    target_fps: Optional[float] = typer.Option(None, help="Smallest batch that reaches this many images/s."),
    memory_mib: Optional[float] = typer.Option(None, help="GPU memory cap for the chosen batch."),
    budget: float = typer.Option(120.0, help="Time budget in seconds (compile included)."),
    max_drop: float = typer.Option(1.0, help="Accuracy bound: max mAP50-95 drop in points."),
    compile: bool = typer.Option(True, "--compile/--no-compile", help="Try torch.compile (GPU).", metavar=""),
    int8: bool = typer.Option(True, "--int8/--no-int8", help="Try INT8 ONNX Runtime (CPU).", metavar=""),
    refine: bool = typer.Option(True, "--refine/--no-refine", help="Then try the winner at smaller input sizes and top-k.", metavar=""),
    calibration: Optional[Path] = typer.Option(None, help="Folder of images for INT8 calibration (default: generated)."),
    val_images: Optional[int] = typer.Option(None, help="Generated validation images (default 200 GPU, 48 CPU)."),
    canvas: str = typer.Option("auto", help="auto: when the --data images are all one size (a camera's frames), tune "
                                            "on their least-padded canvas (384x640 for 720p) and keep it; square: "
                                            "the model's square canvas."),
    trust_model: bool = TRUST_MODEL,
) -> None:
    """Find the fastest pipeline that keeps accuracy, save it as an artifact, and report before/after."""
    trust_models(trust_model)
    output_folder(out)
    from yolotune.models import ModelLoadError
    from yolotune.tune.search import optimize

    try:
        with stop_on_signals(interrupt=True) as stopped, stage_progress("optimizing") as say:
            report = optimize(model, data, device=device, objective=objective, latency_ms=latency_ms, target_fps=target_fps,
                              memory_mib=memory_mib, budget_s=budget, max_drop=max_drop, out=out, compile=compile, refine=refine,
                              int8=int8, calibration=calibration, val_images=val_images, canvas=canvas, progress=say,
                              stop=stopped)
    except (ModelLoadError, ValueError) as e:
        fail(str(e))
    screen = console()
    table = Table(title=f"candidates on {report.device}")
    for col in ("candidate", "status", "images/s", "b1 ms", "mAP50-95", "drop", "note"):
        table.add_column(col, justify="left" if col in ("candidate", "status", "note") else "right")
    for cand in report.candidates:
        c = cand.result
        num = lambda k, d: "" if c.get(k) is None else f"{c[k]:.{d}f}"  # noqa: E731
        table.add_row(cand.name, c.get("status", ""), num("images_per_s", 1), num("latency_ms_b1", 3),
                      num("map50_95", 4), num("drop_points", 2), c.get("reason", ""))
    screen.print(table)
    for n in report.notes:
        screen.print(n)
    if report.chosen:
        screen.print(report.summary)
        screen.print(f"artifact: {out} (reloads in {report.reload_s} s); report: {out / 'report.md'}")
    if report.interrupted:
        raise typer.Exit(EXIT_SIGNALS.get(stopped.reason, EXIT_SIGNALS["SIGINT"]))
    if not report.chosen:
        raise typer.Exit(1)
