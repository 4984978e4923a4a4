"""`yolotune demo`: the main job on embedded defaults, offline, on a fresh machine (CPU is enough).

Generates scenes and a short clip with yolotune's own data generator, runs the embedded default model (trained on
such data; see yolotune/assets/default.json) on them, and writes annotated images, an annotated video, detections
(JSONL, COCO) and a report with throughput, per-stage time, detections per class and accuracy on the samples.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from yolotune.data.synth import write_dataset, write_video

if TYPE_CHECKING:
    from yolotune.pipeline.run import PredictSummary

DEMO_MODEL = "default"


def run_demo(out: Path, device: str = "auto", n_images: int = 8, console: Console | None = None) -> "PredictSummary":
    from yolotune.assets import default_model_record
    from yolotune.pipeline.run import predict_to_sinks
    from yolotune.report.terminal import print_predict_summary
    from yolotune.data.evaluate import coco_metrics
    from yolotune.pipeline import Detector

    console = console or Console()
    samples = out / "samples"
    console.print(f"generating {n_images} scenes and a short clip in {samples}")
    write_dataset(samples, n_images, seed=2026, workers=2)
    write_video(samples / "clip.mp4", frames=48, size=(360, 640), seed=2026)
    record = default_model_record()
    console.print(f"model: the embedded default (yolov8n trained on generated data; held-out mAP50-95 "
                  f"{record['yolotune_val']['map50_95']:.3f})")
    with Detector(DEMO_MODEL, device=device, batch=8, return_images=True) as det:
        summary = predict_to_sinks(det, [str(samples / "images"), str(samples / "clip.mp4")], out,
                                   ["jsonl", "images", "video", "coco"])
        names = det.names
    per_class = Counter()
    for line in (out / "detections.jsonl").read_text().splitlines():
        for d in json.loads(line).get("detections", []):
            per_class[d["class_name"]] += 1
    truth = json.loads((samples / "annotations.json").read_text())
    results = json.loads((out / "coco_results.json").read_text())
    ids = {im["file_name"]: im["id"] for im in truth["images"]}
    by_file = {im["id"]: Path(im["file_name"]).name for im in json.loads((out / "coco_images.json").read_text())}
    results = [dict(r, image_id=ids[by_file[r["image_id"]]]) for r in results if by_file.get(r["image_id"]) in ids]
    metrics = coco_metrics(truth, results)
    (out / "summary.json").write_text(json.dumps({**summary.to_dict(), "per_class": dict(per_class),
                                                  "sample_accuracy": metrics.to_dict()}, indent=2))
    report = out / "report.md"
    report.write_text(
        "# yolotune demo\n\n"
        f"Model: the embedded default, yolov8n trained on yolotune's generated data ({len(names)} classes).\n\n"
        f"| inputs | failed | detections | images/s | device |\n|---|---|---|---|---|\n"
        f"| {summary.inputs} | {summary.failed} | {summary.detections} | {summary.images_per_s} | "
        f"{summary.config['device']} |\n\n"
        "Stage seconds: " + ", ".join(f"{k} {v}" for k, v in summary.stages_s.items()) + "\n\n"
        "Detections per class: " + ", ".join(f"{k} {v}" for k, v in sorted(per_class.items())) + "\n\n"
        f"Accuracy on the sample images (threshold 0.25, so mAP is a lower bound): mAP50-95 {metrics.map50_95:.3f}, "
        f"mAP50 {metrics.map50:.3f}, precision {metrics.precision:.3f}, recall {metrics.recall:.3f}\n"
    )
    summary.outputs.append(str(report))
    print_predict_summary(summary, console)
    console.print(f"demo outputs are in [bold]{out.resolve()}[/]")
    return summary
