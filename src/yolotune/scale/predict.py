"""``predict --ray``: a Ray Data pipeline over the input list, one Detector actor per GPU (or per node's CPUs).

Paths go out, results come back: each actor reads and decodes its own batches on its own device, and the
driver writes every sink in input order (Ray Data keeps the order). Ray retries the batches of an actor that died
on a restarted or another actor; the driver writes each input once, by its position, so a retry cannot duplicate
an output. ``resume``: inputs whose records are already in ``detections.jsonl`` are not sent again; the outputs are
rewritten with the old records in their places, so nothing is written twice.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from yolotune.io.sinks import OutputNames, make_sink
from yolotune.io.sources import SourceItem, SourceList, expand_sources
from yolotune.options import DetectorOptions
from yolotune.pipeline.run import PredictSummary, warnings_for
from yolotune.scale.cluster import connected, plan_actors
from yolotune.types import Detections, ErrorRecord, InputRef, result_from_dict

MAP_BATCHES = 4  # Detector batches per actor call, at least
MIN_CALL_INPUTS = 2048  # inputs per actor call, at least (when there are that many for each actor)
CALLS_PER_ACTOR = 4  # calls per actor, at least: an actor that starts late still finds work
RAY_FORMATS = ("jsonl", "coco")  # sinks fed from records; annotated images and videos need the pixels on the driver


@dataclass
class ActorSummary:
    actor: str  # host:pid
    device: str
    inputs: int
    busy_s: float  # seconds spent in its batches

    @property
    def images_per_s(self) -> float:
        return self.inputs / self.busy_s if self.busy_s > 0 else 0.0

    def to_dict(self) -> dict:
        return {"actor": self.actor, "device": self.device, "inputs": self.inputs, "busy_s": round(self.busy_s, 3),
                "images_per_s": round(self.images_per_s, 1)}


class DetectorActor:
    """A Ray Data actor: one Detector on this worker's device, kept across calls. A call's results come back as one
    row (its inputs' positions and results, pickled once): a row per input cost the driver more than the model."""

    def __init__(self, model: str, overrides: dict):
        import sys

        from yolotune.interpreter import freeze_startup_objects
        from yolotune.pipeline.detector import Detector

        self.det = Detector(model, **overrides)  # an artifact's own options, with the caller's on top
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.device = str(self.det.device)
        self.config = json.dumps(self.det.describe(), default=str)
        # this worker process is the actor's alone: plain predict's interpreter settings (interpreter.py)
        freeze_startup_objects()
        sys.setswitchinterval(0.001)

    def __call__(self, batch: dict) -> dict:
        paths, kinds = [str(p) for p in batch["path"]], [str(k) for k in batch["kind"]]
        start = time.perf_counter()
        # listed by the driver already: listing them again cost a call 6% (benchmarks/results/ray_call_diag_h100.json)
        inputs = SourceList([SourceItem(p, k) for p, k in zip(paths, kinds)])
        grouped = results_per_input(paths, kinds, list(self.det.predict(inputs)))
        call = {"index": [int(i) for i in batch["index"]], "results": pack_results(grouped), "actor": self.name,
                "device": self.device, "seconds": time.perf_counter() - start, "config": self.config}
        # the results themselves (full precision, no pixels), so the driver's sinks write what plain predict writes
        return {"call": [pickle.dumps(call)]}


def pack_results(grouped: list[list]) -> dict:
    """Each input's results (Detections and ErrorRecords) as a few arrays and small tuples: 2,048 Detections
    pickled one by one cost an actor's call 11% (benchmarks/results/ray_call_diag_h100.json)."""
    rows, boxes, scores, classes = [], [], [], []
    names: dict = {}
    for results in grouped:
        rows.append([])
        for r in results:
            ref = r.source
            if r.ok:
                rows[-1].append(("detections", ref.path, ref.frame, ref.time, tuple(r.image_size), len(r.scores)))
                boxes.append(np.asarray(r.boxes, np.float32).reshape(-1, 4))
                scores.append(np.asarray(r.scores, np.float32))
                classes.append(np.asarray(r.class_ids, np.int64))
                names = names or r.names
            else:
                rows[-1].append(("error", ref.path, ref.frame, ref.time, r.reason, r.stage))
    cat = lambda parts, empty: np.concatenate(parts) if parts else empty  # noqa: E731
    return {"rows": rows, "names": names, "boxes": cat(boxes, np.zeros((0, 4), np.float32)),
            "scores": cat(scores, np.zeros(0, np.float32)), "class_ids": cat(classes, np.zeros(0, np.int64))}


def unpack_results(packed: dict) -> list[list]:
    """pack_results' input again: each input's Detections (views into the arrays) and ErrorRecords."""
    out: list[list] = []
    k = 0
    for rows in packed["rows"]:
        out.append([])
        for kind, path, frame, when, *rest in rows:
            if kind == "detections":
                size, n = rest
                out[-1].append(Detections(InputRef(path, frame, when), size, packed["boxes"][k:k + n],
                                          packed["scores"][k:k + n], packed["class_ids"][k:k + n], packed["names"]))
                k += n
            else:
                reason, stage = rest
                out[-1].append(ErrorRecord(InputRef(path, frame, when), reason, stage))
    return out


def results_per_input(paths: list[str], kinds: list[str], results: list) -> list[list]:
    """``predict``'s results (in input order) cut into each input's: one for an image, a video's frames (and gaps)
    while they name it. By position, not by path: an input listed twice gets its own results twice."""
    out: list[list] = []
    j = 0
    for path, kind in zip(paths, kinds):
        mine = []
        while j < len(results) and results[j].source.path == path and (kind == "video" or not mine):
            mine.append(results[j])
            j += 1
        out.append(mine)
    return out


def _done_records(jsonl: Path) -> dict[str, list[dict]]:
    """Records already written, by input path; the last input's are left out (a stop may have cut it short)."""
    done: dict[str, list[dict]] = {}
    if not jsonl.is_file():
        return done
    last = None
    for line in jsonl.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the stop
        done.setdefault(record["path"], []).append(record)
        last = record["path"]
    done.pop(last, None)
    return done


def predict_on_ray(model: str, sources: Iterable[str | Path], out: Path, formats: Iterable[str],
                   overrides: dict, address: str = "local", actors: int | None = None,
                   gpus_per_actor: float = 1.0, num_cpus: int | None = None, resume: bool = False,
                   recursive: bool = False, stop: threading.Event | None = None,
                   progress: Callable[[int, int | None, float], None] | None = None,
                   on_row: Callable[[dict], None] | None = None) -> PredictSummary:
    """``predict_to_sinks`` across a Ray cluster (``address``: local, auto or HOST:PORT). ``overrides``: Detector
    options by name (an artifact's own apply under them). ``on_row`` sees each actor row as it arrives."""
    options = DetectorOptions().replace(**overrides)  # checked here, before any actor starts
    formats = list(formats)
    unsupported = [f for f in formats if f not in RAY_FORMATS]
    if unsupported:
        raise ValueError(f"--ray writes {', '.join(RAY_FORMATS)}; not yet {', '.join(unsupported)} (annotated "
                         "outputs need the pixels where they are drawn): run those without --ray")
    sources = [str(s) for s in sources]
    source_list = expand_sources(sources, recursive=recursive)
    items = source_list.items
    out = Path(out)
    done = _done_records(out / "detections.jsonl") if resume else {}
    todo = [(i, it.path, it.kind) for i, it in enumerate(items) if it.kind != "error" and it.path not in done]
    names = OutputNames(i.path for i in items if i.kind != "error")
    start = time.perf_counter()
    counts = {"n": 0, "ok": 0, "dets": 0}
    errors: list[dict] = []
    per_actor: dict[str, ActorSummary] = {}
    config: dict = {}
    sinks = []
    interrupted = None
    with connected(address, num_cpus) as ray:
        n_actors, resources = plan_actors(ray, options.device, actors, gpus_per_actor)
        sinks = [make_sink(f, out, names) for f in formats]  # after reading what a resumed run keeps

        def write(result) -> None:
            for s in sinks:
                s.write(result)
            counts["n"] += 1
            if result.ok:
                counts["ok"] += 1
                counts["dets"] += len(result)
            else:
                errors.append(result.to_dict())

        try:
            pending: dict[int, dict] = {}
            rows = _rows(ray, model, overrides, options.batch, todo, n_actors, resources)
            for i, item in enumerate(items):
                if stop is not None and stop.is_set():
                    interrupted = getattr(stop, "reason", "stop")
                    break
                if item.kind == "error":
                    write(ErrorRecord(InputRef(item.path), item.error or "bad input", "read"))
                elif item.path in done:
                    for record in done[item.path]:
                        write(result_from_dict(record))
                else:
                    row = _row_for(i, rows, pending)
                    results = row["results"] or [
                        ErrorRecord(InputRef(item.path), "no result came back for this input", "infer")]
                    for result in results:
                        write(result)
                    config = config or json.loads(row["config"])
                    a = per_actor.setdefault(row["actor"], ActorSummary(row["actor"], row["device"], 0, 0.0))
                    a.inputs += 1
                    a.busy_s += float(row["seconds"])
                    if on_row is not None:
                        on_row(row)
                if progress is not None:
                    progress(i + 1, len(items), time.perf_counter() - start)
        except KeyboardInterrupt:
            interrupted = "SIGINT"
        finally:
            rows = None  # the executor stops while Ray is still up
            written = [p for s in sinks for p in s.close()]
    wall = time.perf_counter() - start
    return PredictSummary(
        inputs=counts["n"], ok=counts["ok"], failed=len(errors), detections=counts["dets"], seconds=round(wall, 3),
        images_per_s=round(counts["ok"] / wall, 1) if wall > 0 and counts["ok"] else None,
        skipped_non_media=list(source_list.skipped), warnings=warnings_for(sources, source_list, recursive),
        interrupted=interrupted, config={**config, "ray": address, "actors": n_actors} if config else {"ray": address, "actors": n_actors},
        outputs=written, errors=errors, actors=[a.to_dict() for a in per_actor.values()],
        resumed=sum(len(v) for v in done.values()))


def _row_for(index: int, rows, pending: dict[int, dict]) -> dict:
    """The row of input ``index``. Ray Data keeps the order, so it is normally the next; rows that come early wait in
    ``pending``, and a row for an input already written (a retried batch's) is dropped: each input is written once."""
    while index not in pending:
        row = next(rows)
        if row["index"] >= index:
            pending[row["index"]] = row
    return pending.pop(index)


def _rows(ray, model: str, overrides: dict, batch: int, todo: list[tuple[int, str, str]], n_actors: int,
          resources: dict):
    """A row per input (its results, its actor), in input order."""
    if not todo:
        return
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    ds = ray.data.from_items([{"index": i, "path": p, "kind": k} for i, p, k in todo])
    # many Detector batches per call: each call's predict() fills and drains its pipeline once, which cost a GPU
    # actor most of its rate at 4 batches a call (benchmarks/results/ray_overhead_h200.json); with few inputs, a
    # few calls for each actor
    batch = max(1, min(max(MAP_BATCHES * batch, MIN_CALL_INPUTS), -(-len(todo) // (CALLS_PER_ACTOR * n_actors))))
    mapped = ds.map_batches(
        DetectorActor, batch_size=batch, compute=ray.data.ActorPoolStrategy(size=n_actors),
        fn_constructor_kwargs={"model": str(model), "overrides": overrides},
        # an actor that dies is started again and its batch retried (on it or another): Ray's retries
        max_restarts=-1, max_task_retries=-1, **resources)
    for call_row in mapped.iter_rows():
        # pickles made by this job's own actors on the user's cluster
        call = pickle.loads(call_row["call"])
        n = max(1, len(call["index"]))
        for index, results in zip(call["index"], unpack_results(call["results"])):
            yield {"index": index, "results": results, "actor": call["actor"], "device": call["device"],
                   "seconds": call["seconds"] / n, "config": call["config"]}
