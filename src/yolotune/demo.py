"""`yolotune demo`: the main job on embedded defaults, offline, on a fresh machine.

Until the trained default model exists (a later issue), the model is yolov8n built from its YAML with seeded
random weights and a classification bias that makes it emit boxes: the boxes show the pipeline working, they do
not find real objects. The report says so.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from yolotune.data.samples import write_sample_images, write_sample_video

DEMO_MODEL = "yolov8n.yaml"
DEMO_CLASS_BIAS = -2.5


def run_demo(out: Path, device: str = "auto", n_images: int = 8, console: Console | None = None) -> dict:
    from yolotune.cli import print_summary, run_predict
    from yolotune.pipeline import Detector

    console = console or Console()
    samples = out / "samples"
    console.print(f"generating {n_images} sample images and a short clip in {samples}")
    write_sample_images(samples, n_images, size=(720, 1280), seed=0)
    write_sample_video(samples / "clip.mp4", frames=24, size=(360, 640), seed=1)
    console.print(f"model: {DEMO_MODEL} with seeded random weights (a stand-in until the trained default model ships)")
    with Detector(DEMO_MODEL, device=device, batch=8, class_bias=DEMO_CLASS_BIAS, seed=0, return_images=True, max_det=20) as det:
        summary = run_predict(det, [str(samples)], out, ["jsonl", "images", "coco"], quiet=not console.is_terminal)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    report = out / "report.md"
    report.write_text(
        "# yolotune demo\n\n"
        f"Model: `{DEMO_MODEL}`, random weights (seed 0), class bias {DEMO_CLASS_BIAS}: boxes show the pipeline "
        "working, not real objects.\n\n"
        f"| inputs | failed | detections | images/s | device |\n|---|---|---|---|---|\n"
        f"| {summary['inputs']} | {summary['failed']} | {summary['detections']} | {summary['images_per_s']} | "
        f"{summary['config']['device']} |\n\n"
        "Stage seconds: " + ", ".join(f"{k} {v}" for k, v in summary["stages_s"].items()) + "\n"
    )
    summary["outputs"].append(str(report))
    print_summary(summary, console)
    console.print(f"demo outputs are in [bold]{out.resolve()}[/]")
    return summary
