"""End to end, side by side in one process on one device: Ultralytics predict vs yolotune.

Sections (argv, default all that fit the device): e2e, latency, nms, cpu.
- e2e: 512 real-photo JPEGs 1280x720 -> detections, Ultralytics predict (half, batch 1 and 16) vs yolotune,
  for yolov8n, yolo11n, yolov8m, yolo26n built from their YAML with the same seeded weights on both sides.
- latency: batch-1 frame in host memory -> boxes in host memory, p50/p99 (yolov8n).
- nms: 16 images of dense candidates (84x8400, ~18% above 0.25): Ultralytics non_max_suppression vs ours.
- jpeg: yolov8n, JPEGs decoded by CUDA nvJPEG vs the hardware decoders (NVJPG) vs both split by rate, decode alone
  and end to end, against Ultralytics at its best batch (JPEG_COMPILE=1 adds a compiled model at batch 256).
- cpu: yolov8n on the CPU, Ultralytics predict vs yolotune; with ARTIFACT=dir (an optimize artifact of the default
  model), the default model's .pt on Ultralytics' side and the artifact, with its own options, on ours.
Writes $OUT/e2e.jsonl as it goes and $OUT/e2e_summary.json + $OUT/e2e_summary.md at the end.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import Log, environment, make_photo_jpegs, percentile_ms  # noqa: E402

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")

from yolotune import Detector, load_model  # noqa: E402
from yolotune.models.ultralytics import save_ultralytics_checkpoint  # noqa: E402

BUDGET = float(os.environ.get("BUDGET_S", "400"))
MODELS = os.environ.get("MODELS", "yolov8n,yolo11n,yolov8m,yolo26n").split(",")
log = Log("e2e")
work = Path(tempfile.mkdtemp(prefix="e2e-"))


def checkpoint(cfg: str) -> str:
    path = work / f"{cfg}.pt"
    if not path.exists():
        save_ultralytics_checkpoint(load_model(f"{cfg}.yaml", seed=0), path)
    return str(path)


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# yolo26n runs its NMS-free head on both sides (Ultralytics: nms=False; yolotune: end2end=True)
PEER_ARGS = {"yolo26n": {"nms": False}}
OUR_ARGS = {"yolo26n": {"end2end": True}}


def time_ultralytics(pt: str, source, batch: int, device, half: bool, n: int, **kw) -> float:
    from ultralytics import YOLO

    model = YOLO(pt)
    for _ in model.predict(source[:2 * batch] if isinstance(source, list) else source, half=half, device=device,
                           batch=batch, verbose=False, stream=True, **kw):
        pass
    sync()
    t = time.perf_counter()
    count = sum(1 for _ in model.predict(source, half=half, device=device, batch=batch, verbose=False, stream=True, **kw))
    sync()
    assert count == n, (count, n)
    return n / (time.perf_counter() - t)


def time_ours(pt: str, sources: list[str], batch: int, device: str, repeats: int, **kw) -> tuple[float, Detector]:
    det = Detector(pt, device=device, batch=batch, **kw)
    for _ in det.predict(sources[: batch * 3]):  # capture graphs / warm caches
        pass
    det.timings.clear()
    work_list = sources * repeats
    t = time.perf_counter()
    count = sum(1 for _ in det.predict(work_list))
    rate = count / (time.perf_counter() - t)
    return rate, det


def section_e2e(photos_dir: Path, paths: list[str]):
    for cfg in MODELS:
        if log.elapsed() > BUDGET * 0.7:
            log.emit(section="e2e", model=cfg, skipped="time budget")
            continue
        pt = checkpoint(cfg)
        peer = {}
        for b in ((1, 16) if cfg == "yolov8n" else (16,)):
            peer[b] = time_ultralytics(pt, str(photos_dir), b, 0, True, len(paths), **PEER_ARGS.get(cfg, {}))
        best = None
        for b in (32, 64, 128):
            rate, det = time_ours(pt, paths, b, "cuda", repeats=4, **OUR_ARGS.get(cfg, {}))
            row = dict(batch=b, images_per_s=round(rate, 1), stages_s={k: round(v.seconds, 3) for k, v in det.timings.items()},
                       decode=dict(det.decoder.stats), config=det.describe())
            if best is None or rate > best["images_per_s"]:
                best = row
            det.close()
        log.emit(section="e2e", model=cfg, images=len(paths), repeats=4,
                 ultralytics_images_per_s={f"batch{b}": round(v, 1) for b, v in peer.items()},
                 yolotune=best, ratio_vs_ultralytics_b16=round(best["images_per_s"] / peer[16], 1))


JPEG_DECODES = {"cuda": dict(jpeg_decode="cuda"), "hardware": dict(jpeg_decode="hardware", hardware_share=1.0),
                "split": dict(jpeg_decode="hardware")}


def decode_only(paths: list[str], batch: int, repeats: int, **kw) -> dict:
    """images/s of one ImageDecoder alone (no model) on the photos, in batches, synchronised."""
    from yolotune.io.decode import ImageDecoder
    from yolotune.types import InputRef

    dec = ImageDecoder(torch.device("cuda"), batch=batch, **kw)
    loaded = [dec.load([(InputRef(p), None) for p in paths[i:i + batch]]) for i in range(0, len(paths), batch)]
    for chunk in loaded[:2]:
        dec.decode_loaded(chunk)
    sync()
    t = time.perf_counter()
    for _ in range(repeats):
        for chunk in loaded:
            dec.decode_loaded(chunk)
    sync()
    rate = repeats * len(paths) / (time.perf_counter() - t)
    out = {"images_per_s": round(rate, 1), **dec.describe()}
    dec.close()
    return out


def section_jpeg(photos_dir: Path, paths: list[str]):
    """JPEG decoders side by side: CUDA nvJPEG, the hardware decoders (NVJPG) alone, and the two split by their
    measured rates; decode alone, then end to end at the default batch and at 128 (and, with JPEG_COMPILE=1, a
    compiled FP16 model at batch 256 as optimize tunes it), against Ultralytics at batches 16 and 32."""
    pt = checkpoint("yolov8n")
    peer = {b: time_ultralytics(pt, str(photos_dir), b, 0, True, len(paths)) for b in (16, 32)}
    alone = {name: decode_only(paths, 128, 4, **kw) for name, kw in JPEG_DECODES.items()}
    log.emit(section="jpeg_decode_alone", images=len(paths), batch=128, decoders=alone)
    runs = [(None, {}), (128, {})]
    if os.environ.get("JPEG_COMPILE"):
        # as optimize tunes it for camera-size frames: compiled FP16, the 384x640 canvas 720p photos letterbox into
        runs.append((256, {"compile": "inductor", "imgsz": (384, 640)}))
    for batch, extra in runs:
        for name, kw in JPEG_DECODES.items():
            if log.elapsed() > BUDGET:
                log.emit(section="jpeg", decoder=name, batch=batch, skipped="time budget")
                continue
            det_kw = {**kw, **extra} if batch is None else {**kw, **extra, "batch": batch}
            det = Detector(pt, device="cuda", **det_kw)
            for _ in det.predict(paths[: det.batch * 3]):
                pass
            det.timings.clear()
            t = time.perf_counter()
            count = sum(1 for _ in det.predict(paths * 16))
            rate = count / (time.perf_counter() - t)
            host_us = {k: round(v.seconds / count * 1e6, 1) for k, v in det.timings.items()}
            log.emit(section="jpeg", decoder=name, batch=det.batch, options=det_kw, images=count,
                     images_per_s=round(rate, 1), host_us_per_image=host_us, decode=dict(det.decoder.stats),
                     split=det.decoder.describe(), ultralytics_images_per_s={f"batch{b}": round(v, 1) for b, v in peer.items()},
                     ratio_vs_ultralytics_best=round(rate / max(peer.values()), 1))
            det.close()


def section_latency(paths: list[str]):
    from yolotune.io.decode import decode_with_pil

    pt = checkpoint("yolov8n")
    frames = [decode_with_pil(Path(p).read_bytes()) for p in paths[:8]]
    det = Detector(pt, device="cuda", batch=1)
    for i in range(30):
        det.detect([frames[i % 8]])
    samples = []
    for i in range(300):
        t = time.perf_counter()
        det.detect([frames[i % 8]])
        samples.append(time.perf_counter() - t)
    # breakdown of the one-graph path: upload (two ways) then letterbox+model+NMS+D2H replay
    (fb,) = det.frames.buffers.values()
    breakdown = {}
    for mode in ("pageable", "pinned"):
        det.frames.upload_mode = mode
        up, replay, total = [], [], []
        with torch.cuda.stream(det.compute_stream), torch.inference_mode():
            for i in range(200):
                t0 = time.perf_counter()
                det.frames.upload([frames[i % 8]], fb)
                det.compute_stream.synchronize()
                t1 = time.perf_counter()
                fb.graph.replay()
                det.compute_stream.synchronize()
                t2 = time.perf_counter()
                det.detect([frames[i % 8]])
                total.append(time.perf_counter() - t2)
                up.append(t1 - t0)
                replay.append(t2 - t1)
        breakdown[mode] = {"upload": percentile_ms(up, 50), "graph_replay": percentile_ms(replay, 50),
                           "detect_p50": percentile_ms(total, 50), "detect_p99": percentile_ms(total, 99)}
    det.frames.upload_mode = "pinned"
    # model-only graph replay at batch 1 on the same canvas, both memory formats
    model_only = {}
    canvas = fb.inputs.shape[-2:]
    for channels_last in (True, False):
        m = load_model(pt).runnable
        m.model.fuse(verbose=False)
        m = m.cuda().half().eval()
        x = torch.rand(1, 3, *canvas, device="cuda", dtype=torch.half)
        if channels_last:
            m, x = m.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            for _ in range(3):
                m(x)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                m(x)
            model_only["channels_last" if channels_last else "contiguous"] = cuda_median_ms(g.replay, 200)
    from ultralytics import YOLO

    model = YOLO(pt)
    bgr = [np.ascontiguousarray(f[..., ::-1]) for f in frames]
    for i in range(10):
        model.predict(bgr[i % 8], half=True, device=0, verbose=False)
    peer = []
    for i in range(100):
        t = time.perf_counter()
        model.predict(bgr[i % 8], half=True, device=0, verbose=False)
        peer.append(time.perf_counter() - t)
    log.emit(section="latency", model="yolov8n", frame="1280x720 RGB uint8 in host memory", batch=1,
             yolotune_ms={"p50": percentile_ms(samples, 50), "p99": percentile_ms(samples, 99)},
             ultralytics_ms={"p50": percentile_ms(peer, 50), "p99": percentile_ms(peer, 99)},
             ratio_p50=round(np.median(peer) / np.median(samples), 1),
             breakdown_ms=breakdown, model_only_graph_ms=model_only,
             config=det.describe())


def section_agreement(paths: list[str]):
    """Measured, not asserted: how many of Ultralytics' boxes ours reproduce on a random-init model, FP16 and FP32."""
    from ultralytics import YOLO

    from yolotune.models.ultralytics import save_ultralytics_checkpoint as save

    sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
    from matching import matched_fraction

    imgs = paths[:64]
    for bias in (-2.0, -4.0):
        pt = str(save(load_model("yolov8n.yaml", seed=0, class_bias=bias), work / f"biased{bias}.pt"))
        for half in (True, False):
            model = YOLO(pt)
            ref = []
            for k in range(0, len(imgs), 16):
                for r in model.predict(imgs[k : k + 16], half=half, device=0, verbose=False):
                    ref.append((r.boxes.xyxy.cpu().numpy(), r.boxes.conf.cpu().numpy(), r.boxes.cls.cpu().numpy().astype(np.int64)))
            for preprocess in ("gpu", "cpu"):
                with Detector(pt, device="cuda", batch=16, half=half, preprocess=preprocess) as det:
                    got = [(r.boxes, r.scores, r.class_ids) for r in det.predict(imgs)]
                frac, total = matched_fraction(ref, got)
                log.emit(section="agreement", model=f"yolov8n random-init, class bias {bias}", precision="fp16" if half else "fp32",
                         decode="nvjpeg + device letterbox" if preprocess == "gpu" else "cpu (pillow + opencv)", images=len(imgs), ultralytics_boxes=total,
                         matched_fraction=round(frac, 4), reverse_matched_fraction=round(matched_fraction(got, ref)[0], 4))


def dense_predictions(batch: int = 16, fraction: float = 0.18, seed: int = 0) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(seed)
    pred = torch.rand(batch, 84, 8400, device="cuda", generator=g)
    pred[:, 0:2] *= 640
    pred[:, 2:4] = pred[:, 2:4] * 120 + 8
    pred[:, 4:] *= 0.2  # background scores below the threshold
    hot = torch.rand(batch, 8400, device="cuda", generator=g) < fraction
    cls = torch.randint(0, 80, (batch, 8400), device="cuda", generator=g)
    val = 0.25 + 0.75 * torch.rand(batch, 8400, device="cuda", generator=g)
    pred[:, 4:].scatter_(1, cls[:, None], torch.where(hot, val, pred[:, 4:].gather(1, cls[:, None])[:, 0])[:, None])
    return pred


def cuda_median_ms(fn, iters: int) -> float:
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return round(float(np.median(times)), 3)


def section_nms():
    from ultralytics.utils.nms import non_max_suppression

    from yolotune.ops.postprocess import PostprocessConfig, postprocess

    pred = dense_predictions()
    above = float((pred[:, 4:].amax(1) > 0.25).float().mean())
    geometry = torch.tensor([[1.0, 1.0, 0.0, 0.0, 640.0, 640.0]] * 16, device="cuda")
    cfg = PostprocessConfig(conf=0.25, iou=0.7, max_det=300)
    for _ in range(3):
        non_max_suppression(pred, 0.25, 0.7, max_det=300)
        postprocess(pred, geometry, cfg)
    sync()
    peer = cuda_median_ms(lambda: non_max_suppression(pred, 0.25, 0.7, max_det=300), 10)
    eager = cuda_median_ms(lambda: postprocess(pred, geometry, cfg), 50)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        postprocess(pred, geometry, cfg)
    graphed = cuda_median_ms(graph.replay, 100)
    ref = non_max_suppression(pred, 0.25, 0.7, max_det=300)
    dets, counts = postprocess(pred, geometry, cfg)
    log.emit(section="nms", batch=16, candidates="84x8400", fraction_above_conf=round(above, 3),
             ultralytics_ms=peer, yolotune_eager_ms=eager, yolotune_cuda_graph_ms=graphed,
             ratio_vs_ultralytics=round(peer / graphed, 1),
             kept_per_image_ultralytics=[len(r) for r in ref][:4], kept_per_image_yolotune=counts.tolist()[:4])


def section_cpu(paths: list[str]):
    torch.set_num_threads(os.cpu_count() or 2)
    artifact = os.environ.get("ARTIFACT")
    if artifact:
        from yolotune.assets import resolve

        pt = str(work / "default.pt")
        Path(pt).write_bytes(Path(resolve("default")).read_bytes())
    else:
        pt = checkpoint("yolov8n")
    n = min(32, len(paths))
    d = work / "cpu_photos"
    d.mkdir(exist_ok=True)
    for p in paths[:n]:
        (d / Path(p).name).write_bytes(Path(p).read_bytes())
    peer = {b: time_ultralytics(pt, str(d), b, "cpu", False, n) for b in (1, 8)}
    torch.set_num_threads(os.cpu_count() or 2)  # Ultralytics lowers torch's threads on small machines
    ours = {}
    for b in (1, 8):
        rate, det = time_ours(artifact or pt, paths[:n], b, "cpu", repeats=1)
        ours[b] = round(rate, 1)
    log.emit(section="cpu", model="default (artifact: " + artifact + ")" if artifact else "yolov8n", images=n,
             cores=os.cpu_count(), config=det.describe(),
             ultralytics_images_per_s={f"batch{b}": round(v, 1) for b, v in peer.items()},
             yolotune_images_per_s={f"batch{b}": v for b, v in ours.items()},
             ratio_best=round(max(ours.values()) / max(peer.values()), 2))


def write_summary():
    env = environment()
    out = Path(os.environ.get("OUT") or work)
    (out / "e2e_summary.json").write_text(json.dumps({"environment": env, "rows": log.rows}, indent=2))
    lines = [f"# End to end, side by side ({env['device']})", "",
             f"torch {env['torch']}, torchvision {env['torchvision']}, ultralytics {env.get('ultralytics')}, "
             f"triton {env.get('triton')}, Python {env['python']}, {env['cpu_count']} CPU cores", ""]
    e2e = [r for r in log.rows if r.get("section") == "e2e" and "yolotune" in r]
    if e2e:
        lines += ["| model | Ultralytics b1 img/s | Ultralytics b16 img/s | yolotune img/s (batch) | ratio vs b16 |", "|---|---|---|---|---|"]
        for r in e2e:
            u = r["ultralytics_images_per_s"]
            lines.append(f"| {r['model']} | {u.get('batch1', '')} | {u['batch16']} | {r['yolotune']['images_per_s']} "
                         f"({r['yolotune']['batch']}) | {r['ratio_vs_ultralytics_b16']}x |")
        lines.append("")
    for r in log.rows:
        if "error" in r or "skipped" in r:
            lines.append(f"{r['section']} {r.get('model', '')}: not measured ({r.get('error') or r.get('skipped')})")
            continue
        if r.get("section") == "latency":
            lines.append(f"Batch-1 latency, yolov8n, 720p frame host->boxes host: yolotune p50 {r['yolotune_ms']['p50']} ms / "
                         f"p99 {r['yolotune_ms']['p99']} ms; Ultralytics p50 {r['ultralytics_ms']['p50']} ms ({r['ratio_p50']}x).")
        if r.get("section") == "agreement":
            lines.append(f"Agreement with Ultralytics predict ({r['model']}, {r['precision']}, {r['decode']} decode, {r['images']} photos): "
                         f"{r['matched_fraction']:.2%} of its {r['ultralytics_boxes']} boxes matched, {r['reverse_matched_fraction']:.2%} back.")
        if r.get("section") == "nms":
            lines.append(f"NMS, 16 images of dense candidates ({r['fraction_above_conf']:.0%} above 0.25): Ultralytics "
                         f"{r['ultralytics_ms']} ms, yolotune {r['yolotune_cuda_graph_ms']} ms in a CUDA graph "
                         f"({r['yolotune_eager_ms']} ms eager): {r['ratio_vs_ultralytics']}x.")
        if r.get("section") == "cpu":
            lines.append(f"CPU ({r['cores']} cores), yolov8n, {r['images']} 720p photos: Ultralytics "
                         f"{r['ultralytics_images_per_s']} images/s, yolotune {r['yolotune_images_per_s']} ({r['ratio_best']}x best vs best).")
    (out / "e2e_summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str]) -> None:
    cuda = torch.cuda.is_available()
    sections = argv or (["nms", "latency", "agreement", "e2e"] if cuda else ["cpu"])
    log.emit(section="env", **environment())
    photos_dir = work / "photos"
    paths = make_photo_jpegs(photos_dir, 512 if cuda else 32)
    log.emit(section="photos", n=len(paths), mean_kb=round(np.mean([Path(p).stat().st_size for p in paths]) / 1024, 1))
    for s in sections:
        try:
            {"e2e": lambda: section_e2e(photos_dir, paths), "latency": lambda: section_latency(paths),
             "nms": section_nms, "cpu": lambda: section_cpu(paths), "agreement": lambda: section_agreement(paths),
             "jpeg": lambda: section_jpeg(photos_dir, paths)}[s]()
        except Exception as e:  # one failing section must not lose the others
            import traceback

            log.emit(section=s, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-2000:])
    write_summary()


if __name__ == "__main__":
    main(sys.argv[1:])
