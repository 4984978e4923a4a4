"""Train the embedded default model: yolov8n on yolotune's generated data, reproducibly, in one GPU call.

Writes under $OUT: default.pt (FP16 weights), train_record.json (command, seed, versions, timings, metrics on the
held-out split generated with a different seed, measured by yolotune's own pipeline and by Ultralytics' val).
Resume: pass --resume PATH/last.pt (a previous call's $OUT/last.pt, carried back) to continue training.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "True")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=5000)
    ap.add_argument("--val", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-seed", type=int, default=1)
    ap.add_argument("--hours", type=float, default=0.1, help="training time budget (Ultralytics 'time')")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--resume", default=None)
    ap.add_argument("--init", default=None, help="start from these weights (fine-tune) instead of the YAML")
    ap.add_argument("--lr0", type=float, default=None, help="initial learning rate (with --init: AdamW)")
    ap.add_argument("--work", default="/tmp/yolotune-train")
    ap.add_argument("--device", default="0")
    ap.add_argument("--workers", type=int, default=8, help="dataloader workers")
    ap.add_argument("--cache", default="", help="Ultralytics cache: '' (off), ram or disk")
    args = ap.parse_args()
    out = Path(os.environ.get("OUT") or args.work)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    record: dict = {"command": " ".join(sys.argv), "args": vars(args), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    import torch
    import ultralytics
    from ultralytics import YOLO

    from yolotune.data.shapes import CLASS_NAMES
    from yolotune.data.synth import write_dataset

    record["versions"] = {"torch": torch.__version__, "ultralytics": ultralytics.__version__, "python": sys.version.split()[0],
                          "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    t = time.time()
    workers = os.cpu_count() or 8
    write_dataset(work / "train", args.train, seed=args.seed, workers=workers)
    write_dataset(work / "val", args.val, seed=args.val_seed, workers=workers)
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(CLASS_NAMES))
    data_yaml = work / "data.yaml"
    data_yaml.write_text(f"path: {work}\ntrain: train/images\nval: val/images\nnames:\n{names}\n")
    record["generate_s"] = round(time.time() - t, 1)
    print(json.dumps(record), flush=True)

    t = time.time()
    model = YOLO(args.resume or args.init or "yolov8n.yaml")
    train_kw = dict(data=str(data_yaml), epochs=args.epochs, time=args.hours, imgsz=640, batch=args.batch,
                    workers=args.workers, seed=args.seed, deterministic=True, plots=False, project=str(work / "runs"),
                    name="default", exist_ok=True, device=args.device, patience=1000, cache=args.cache or False)
    if args.init:  # second stage: a gentle optimiser from the given weights
        train_kw.update(optimizer="AdamW", lr0=args.lr0 or 0.0005, warmup_epochs=0.5)
    results = model.train(resume=True) if args.resume else model.train(**train_kw)
    record["train_s"] = round(time.time() - t, 1)
    run = work / "runs" / "default" / "weights"
    best = run / "best.pt"
    shutil.copy(best, out / "default.pt")
    if (run / "last.pt").exists():
        shutil.copy(run / "last.pt", out / "last.pt")
    record["ultralytics_val"] = {"map50_95": float(results.box.map), "map50": float(results.box.map50)} if results else None

    from yolotune import Detector
    from yolotune.data.validate import validate

    with Detector(str(best), device="auto", batch=32, conf=0.001, max_det=300) as det:
        m = validate(det, work / "val")
    record["yolotune_val"] = m.to_dict()
    record["weights_bytes"] = (out / "default.pt").stat().st_size
    (out / "train_record.json").write_text(json.dumps(record, indent=2))
    print(json.dumps({k: record[k] for k in ("generate_s", "train_s", "ultralytics_val", "weights_bytes")}), flush=True)
    print(json.dumps(record["yolotune_val"]), flush=True)


if __name__ == "__main__":
    main()
