"""Where end-to-end throughput (JPEG files -> detections) stops, on one GPU, in one process.

Measures, on N real-photo 720p JPEGs (default 512, looped REPEATS times per predict call so the pipeline's fill
and drain do not dominate):
- nvJPEG alone (torchvision batched decode, hardware engines on A100/H100) at batch 64 / 128 / 256;
- the model + NMS step alone for each engine configuration, at the canvas the photos need;
- decode and model at the same time (decode in a thread, graph replays in this one): what each keeps;
- Detector.predict end to end for: CUDA graph (rect canvas), compiled + graph (square canvas, as optimize chose
  it), compiled + graph on the rect canvas; with the producer's stage times and the decoder's counters;
- eager FP16 (no graph, no compile) model + NMS at the same batch and canvas: the compiled row's ratio over it;
- CONFIGS=artifact-square:0,artifact-rect:0: the artifact of a default `optimize()` run here, as saved and with
  rect=True (`yolotune predict ARTIFACT --rect`); artifact-camera:0: the artifact of `optimize()` on generated
  1280x720 scenes (it keeps their 384x640 canvas), as saved.
Writes $OUT/e2e_diag.json.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, make_photo_jpegs  # noqa: E402

import torch  # noqa: E402

from yolotune import Detector  # noqa: E402
from yolotune.interpreter import tuned_for_threads  # noqa: E402
from yolotune.io.decode import read_file  # noqa: E402
from yolotune.profile.sweep import measure_batch  # noqa: E402

N = int(os.environ.get("PHOTOS", "512"))
REPEATS = int(os.environ.get("REPEATS", "16"))
CONFIGS = os.environ.get("CONFIGS", "compiled-rect:256,eager-rect:256,compiled-rect:512,eager-rect:512,"
                         "compiled-square:128,eager-square:128,graph-rect:256").split(",")


def decode_rate(datas: list[bytes], batch: int, seconds: float = 3.0) -> float:
    from torchvision.io import decode_jpeg

    tensors = [torch.frombuffer(d, dtype=torch.uint8) for d in datas]
    decode_jpeg(tensors[:batch], device="cuda")
    torch.cuda.synchronize()
    n, t0, i = 0, time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        chunk = tensors[i : i + batch] if i + batch <= len(tensors) else tensors[:batch]
        i = (i + batch) % len(tensors)
        decode_jpeg(chunk, device="cuda")
        n += len(chunk)
    torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def concurrent(det: Detector, datas: list[bytes], batch: int, canvas: tuple[int, int], seconds: float = 3.0) -> dict:
    """Decode (nvJPEG, its own thread and stream) while the model's graph replays here: images/s of each."""
    from torchvision.io import decode_jpeg

    tensors = [torch.frombuffer(d, dtype=torch.uint8) for d in datas]
    stop = threading.Event()
    decoded = [0]

    def decoder():
        s = torch.cuda.Stream()
        with torch.cuda.stream(s):
            i = 0
            while not stop.is_set():
                decode_jpeg(tensors[i : i + batch] or tensors[:batch], device="cuda")
                decoded[0] += batch
                i = (i + batch) % max(1, len(tensors) - batch)
            s.synchronize()

    h, w = canvas
    x = torch.rand(batch, 3, h, w, device="cuda").half().contiguous(memory_format=torch.channels_last)
    g = torch.tensor([[1.0, 1.0, 0.0, 0.0, float(h), float(w)]], device="cuda").repeat(batch, 1)
    with torch.inference_mode():
        det.step(x, g)
        torch.cuda.synchronize()
        th = threading.Thread(target=decoder)
        th.start()
        n, t0 = 0, time.perf_counter()
        with torch.cuda.stream(det.compute_stream):
            while time.perf_counter() - t0 < seconds:
                det.step(x, g)
                n += batch
                det.compute_stream.synchronize()
        dt = time.perf_counter() - t0
        stop.set()
        th.join()
    return {"model_images_per_s": n / dt, "decode_images_per_s": decoded[0] / dt}


def main() -> None:
    out = Path(os.environ.get("OUT") or tempfile.mkdtemp())
    work = Path(tempfile.mkdtemp(prefix="e2e-diag-"))
    os.environ.setdefault("YOLOTUNE_ENGINE_CACHE", str(work / "engines"))
    paths = make_photo_jpegs(work / "photos", N)
    datas = [bytes(read_file(p)) for p in paths]
    rows: dict = {"env": environment(), "photos": N, "mean_kb": sum(map(len, datas)) / len(datas) / 1024,
                  "repeats_per_call": REPEATS, "decode_only": {}, "configs": []}
    for b in (64, 128, 256):
        rows["decode_only"][b] = round(decode_rate(datas, b), 1)
    print("decode only", rows["decode_only"], flush=True)
    (out / "e2e_diag.json").write_text(json.dumps(rows, indent=1))
    artifacts: dict[str, Path] = {}

    def artifact_for(kind: str) -> Path:
        """What `yolotune optimize` (defaults, 120 s) saves: "default" tunes on the generated mixed-size scenes (square
        canvas); "camera" on generated 1280x720 scenes, so the artifact keeps their 384x640 canvas (--canvas auto)."""
        if kind not in artifacts:
            from yolotune.data.synth import SynthConfig, write_dataset
            from yolotune.tune.search import optimize

            data = None
            if kind == "camera":
                data = write_dataset(work / "camera-scenes", 200, seed=101, cfg=SynthConfig(sizes=((720, 1280),)))
            artifacts[kind] = work / f"artifact-{kind}"
            report = optimize("default", data, device="cuda", out=artifacts[kind]).to_dict()
            rows["artifact" if kind == "default" else f"artifact_{kind}"] = {
                "chosen": report["chosen"]["name"], "options": report["chosen"]["options"],
                "search_s": report["search_s"], "reload_s": report["reload_s"], "canvas": report.get("canvas"),
                "summary": report["summary"]}
        return artifacts[kind]

    for cfg in CONFIGS:
        name, batch = cfg.split(":")
        batch = int(batch)
        t0 = time.perf_counter()
        if name.startswith("artifact"):  # -square: as saved; -rect: `predict ARTIFACT --rect`; -camera: as saved
            artifact = artifact_for("camera" if name == "artifact-camera" else "default")
            det = Detector(str(artifact), **({"rect": True} if "-rect" in name else {}))
            batch = det.batch
        else:
            opts = dict(compile="inductor" if name.startswith("compiled") else False, rect="-rect" in name,
                        cuda_graph=not name.startswith("eager"))
            det = Detector("default", device="cuda", batch=batch, **opts)
        for _ in det.predict(paths[: batch * 2]):  # compile, capture the batch's graph
            pass
        setup_s = time.perf_counter() - t0
        canvas = sorted(det.canvases)[0] if det.canvases else det.imgsz
        row = {"config": name, "batch": batch, "canvas": list(canvas), "setup_s": round(setup_s, 1)}
        p = measure_batch(det, batch, *canvas, repeats=5, min_seconds=0.3)
        row["model_only_images_per_s"] = round(p.images_per_s, 1)
        compiled_row = next((r for r in rows["configs"] if r["config"].startswith("compiled") and r["batch"] == batch
                      and r["canvas"] == row["canvas"]), None) if name.startswith("eager") else None
        if compiled_row is not None:  # the compiled + graph row at this batch and canvas, over eager FP16
            row["compiled_over_eager"] = round(compiled_row["model_only_images_per_s"] / p.images_per_s, 2)
        if name.startswith("eager"):  # model-only reference: eager's end to end is not the question here
            rows["configs"].append(row)
            print(json.dumps(row, default=str), flush=True)
            det.close()
            continue
        row["concurrent"] = {k: round(v, 1) for k, v in concurrent(det, datas, batch, canvas).items()}
        rates = []
        for _ in range(4):
            det.timings.clear()
            for k in ("read_s", "gpu_decode_s"):
                det.decoder.stats[k] = 0.0
            work_list = paths * REPEATS
            t = time.perf_counter()
            count = sum(1 for r in det.predict(work_list) if r.ok)
            rates.append(count / (time.perf_counter() - t))
        row["e2e_images_per_s"] = [round(r, 1) for r in rates]
        row["e2e_best"] = round(max(rates), 1)
        # the same runs with the interpreter tuned for many threads: a 1 ms thread switch interval (5 ms default)
        # and the start-up objects frozen out of the garbage collector's full passes
        tuned = []
        with tuned_for_threads():  # what `yolotune predict` applies to its own process
            for _ in range(4):
                t = time.perf_counter()
                count = sum(1 for r in det.predict(paths * REPEATS) if r.ok)
                tuned.append(count / (time.perf_counter() - t))
        row["e2e_switch_1ms_gc_frozen_images_per_s"] = [round(r, 1) for r in tuned]
        row["stages_s_last"] = {k: round(v.seconds, 3) for k, v in det.timings.items()}
        row["decoder_last"] = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in det.decoder.stats.items()}
        row["images_per_call"] = len(paths) * REPEATS
        row["describe"] = det.describe()
        det.close()
        rows["configs"].append(row)
        print(json.dumps(row, default=str), flush=True)
        (out / "e2e_diag.json").write_text(json.dumps(rows, indent=1, default=str))
        del det
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
