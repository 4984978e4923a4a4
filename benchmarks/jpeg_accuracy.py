"""Accuracy of detection on JPEGs decoded by the GPU's hardware decoders (NVJPG) vs CUDA nvJPEG vs Pillow (the CPU
decode path), on labelled generated 720p scenes (`data synth`: objects of 10 classes, JPEG qualities 40-95).

SCENES images go through `predict` three times in one process on one GPU: `jpeg_decode="cpu"`, `"cuda"` and
`"hardware"` (NVJPG alone, hardware_share=1); each is scored against the ground truth (COCO mAP50-95 and mAP50,
faster-coco-eval). Environment: SCENES (200), BATCH (32). Writes jpeg_accuracy.json under $OUT (or the working
directory).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment  # noqa: E402

from yolotune import Detector  # noqa: E402
from yolotune.data.evaluate import coco_metrics  # noqa: E402
from yolotune.data.synth import SynthConfig, write_dataset  # noqa: E402

SCENES = int(os.environ.get("SCENES", "200"))
BATCH = int(os.environ.get("BATCH", "32"))
DECODERS = {"cpu": dict(jpeg_decode="cpu"), "cuda": dict(jpeg_decode="cuda"),
            "hardware": dict(jpeg_decode="hardware", hardware_share=1.0)}


def score(name: str, images: Path, gt: dict) -> dict:
    ids = {im["file_name"]: im["id"] for im in gt["images"]}
    results, seen = [], 0
    with Detector("default", device="cuda", batch=BATCH, conf=0.001, **DECODERS[name]) as det:
        for r in det.predict([str(images / f) for f in sorted(ids)]):
            if not hasattr(r, "to_coco"):
                continue
            seen += 1
            results += r.to_coco(ids[Path(r.source.path).name])
        stats = dict(det.decoder.stats)
    m = coco_metrics(gt, results)
    return {"jpeg_decode": name, "images": seen, "map50_95": round(m.map50_95 * 100, 2),
            "map50": round(m.map50 * 100, 2), "decoded": {k: stats[k] for k in ("gpu", "hardware", "cpu")}}


def main() -> None:
    out_dir = Path(os.environ.get("OUT", "."))
    with tempfile.TemporaryDirectory() as work:
        data = write_dataset(Path(work) / "scenes", SCENES, seed=7, cfg=SynthConfig(sizes=((720, 1280),)))
        gt = json.loads((data / "annotations.json").read_text())
        rows = [score(name, data / "images", gt) for name in DECODERS]
    for r in rows:
        print(json.dumps(r), flush=True)
    cpu = rows[0]["map50_95"]
    result = {"benchmark": "jpeg_accuracy", "date": time.strftime("%Y-%m-%d"), "environment": environment(),
              "scenes": SCENES, "size": [720, 1280], "rows": rows,
              "map50_95_difference_vs_cpu": {r["jpeg_decode"]: round(r["map50_95"] - cpu, 2) for r in rows[1:]},
              "command": f"SCENES={SCENES} scripts/gpu-check jpeg_accuracy.py"}
    print(json.dumps({"map50_95_difference_vs_cpu": result["map50_95_difference_vs_cpu"]}))
    (out_dir / "jpeg_accuracy.json").write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
