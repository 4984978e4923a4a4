"""Accuracy of detection on video decoded by NVDEC vs FFmpeg (the CPU path), on labelled generated camera clips.

CLIPS camera-like 720p30 clips (`data synth --camera`, each with its per-frame boxes) go through `predict` twice in
one process on one GPU: `video_decode="cpu"` and `video_decode="nvdec"`; both are scored against the clips' ground
truth (COCO mAP50-95 and mAP50, faster-coco-eval). Environment: CLIPS (4), FRAMES (90), BATCH (32). Writes
nvdec_accuracy.json under $OUT (or the working directory).
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
from yolotune.data.synth import write_video  # noqa: E402

CLIPS = int(os.environ.get("CLIPS", "4"))
FRAMES = int(os.environ.get("FRAMES", "90"))
BATCH = int(os.environ.get("BATCH", "32"))


def ground_truth(clips: list[Path]) -> tuple[dict, dict]:
    """COCO ground truth of every frame of ``clips``, and (clip, frame) -> image id."""
    images, annotations, ids, names = [], [], {}, None
    for clip in clips:
        truth = json.loads(clip.with_suffix(".json").read_text())
        names = truth["classes"]
        for row in truth["frames"]:
            ids[(str(clip), row["frame"])] = len(images) + 1
            images.append({"id": len(images) + 1, "width": 1280, "height": 720, "file_name": f"{clip.name}#{row['frame']}"})
            for c, x1, y1, x2, y2 in row["boxes"]:
                annotations.append({"id": len(annotations) + 1, "image_id": images[-1]["id"], "category_id": int(c) + 1,
                                    "bbox": [x1, y1, x2 - x1, y2 - y1]})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}, ids


def score(video_decode: str, clips: list[Path], gt: dict, ids: dict) -> dict:
    results, frames = [], 0
    t0 = time.perf_counter()
    with Detector("default", device="cuda", batch=BATCH, video_decode=video_decode, conf=0.001) as det:
        for r in det.predict([str(c) for c in clips]):
            if getattr(r, "error", None) is not None or not hasattr(r, "to_coco"):
                continue
            frames += 1
            results += r.to_coco(ids[(r.source.path, r.source.frame)], category_offset=1)
    seconds = time.perf_counter() - t0
    m = coco_metrics(gt, results)
    return {"video_decode": video_decode, "frames": frames, "map50_95": round(m.map50_95 * 100, 2),
            "map50": round(m.map50 * 100, 2), "seconds": round(seconds, 2)}


def main() -> None:
    out_dir = Path(os.environ.get("OUT", "."))
    with tempfile.TemporaryDirectory() as work:
        clips = [write_video(Path(work) / f"clip{k}.mp4", frames=FRAMES, size=(720, 1280), fps=30, seed=100 + k,
                             objects=8, camera=True) for k in range(CLIPS)]
        gt, ids = ground_truth(clips)
        rows = [score(mode, clips, gt, ids) for mode in ("cpu", "nvdec")]
    for r in rows:
        print(json.dumps(r), flush=True)
    result = {"benchmark": "nvdec_accuracy", "date": time.strftime("%Y-%m-%d"), "environment": environment(),
              "clips": CLIPS, "frames_per_clip": FRAMES, "size": [720, 1280], "rows": rows,
              "map50_95_difference": round(rows[1]["map50_95"] - rows[0]["map50_95"], 2),
              "command": f"CLIPS={CLIPS} FRAMES={FRAMES} scripts/gpu-check nvdec_accuracy.py"}
    print(json.dumps({"map50_95_difference": result["map50_95_difference"]}))
    (out_dir / "nvdec_accuracy.json").write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
