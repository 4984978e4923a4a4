"""A whole predict job: sources in, every result into the sinks, a summary out. What ``yolotune predict`` runs, for
the library too (``predict_to_sinks``). A ``stop`` event ends it early and cleanly: the results so far are written
by every sink (JSONL, COCO, images, videos), the batch in flight is dropped, and the summary says why it stopped.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable


@dataclass
class PredictSummary:
    """What a predict job did: counts, throughput, the outputs written, and every failed input's error record."""

    inputs: int
    ok: int
    failed: int
    detections: int
    seconds: float
    images_per_s: float | None  # None when nothing was detected on (no throughput for nothing)
    skipped_non_media: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    interrupted: str | None = None  # the signal that stopped it (SIGINT, SIGTERM), or None
    stages_s: dict[str, float] = field(default_factory=dict)
    decode: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)  # Detector.describe()
    outputs: list[str] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)  # ErrorRecord.to_dict() of each failed input
    actors: list[dict] = field(default_factory=list)  # with --ray: each actor's device, inputs and images/s
    resumed: int = 0  # with --resume: records kept from the run before

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def predict_to_sinks(detector, sources: Iterable[str | Path], out: Path, formats: Iterable[str],
                     recursive: bool = False, stop: threading.Event | None = None,
                     progress: Callable[[int, int | None, float], None] | None = None) -> PredictSummary:
    """Run ``detector`` over ``sources`` into the sinks named by ``formats`` under ``out``; the run summary.

    ``progress(done, total, seconds)`` is called every few results (total None when a video does not declare its
    frames). ``stop``: set it (a signal handler, say) to end the run with what was done so far."""
    from yolotune.io.sinks import OutputNames, make_sink
    from yolotune.io.sources import expand_sources

    sources = [str(s) for s in sources]
    source_list = expand_sources(sources, recursive=recursive)
    names = OutputNames(i.path for i in source_list.items if i.kind != "error")
    sinks = [make_sink(f, Path(out), names) for f in formats]
    total = detector.count_inputs(source_list)
    errors: list[dict] = []
    n = n_dets = 0
    start = time.perf_counter()
    try:
        for result in detector.predict(source_list):
            for s in sinks:
                s.write(result)
            n += 1
            if result.ok:
                n_dets += len(result)
            else:
                errors.append(result.to_dict())
            if progress is not None and (n % 8 == 0 or n == total):
                progress(n, total, time.perf_counter() - start)
            if stop is not None and stop.is_set():
                break  # the generator closes: the batch in flight is dropped
    finally:
        written = [p for s in sinks for p in s.close()]  # every sink writes what it has, also when interrupted
    wall = time.perf_counter() - start
    if progress is not None and n and total is None and not (stop is not None and stop.is_set()):
        progress(n, n, wall)  # the last word where the total was unknown: all done
    ok = n - len(errors)
    return PredictSummary(
        inputs=n, ok=ok, failed=len(errors), detections=n_dets, seconds=round(wall, 3),
        images_per_s=round(ok / wall, 1) if wall > 0 and ok else None,
        skipped_non_media=list(source_list.skipped),
        warnings=warnings_for(sources, source_list, recursive) + _model_warnings(detector),
        interrupted=getattr(stop, "reason", None) if stop is not None and stop.is_set() else None,
        stages_s={k: round(v.seconds, 4) for k, v in detector.timings.items()},
        decode=dict(detector.decoder.stats), config=detector.describe(), outputs=written, errors=errors)


def _model_warnings(detector) -> list[str]:
    """A model config has random weights: fine for timing, but its boxes mean nothing and its classes are numbers."""
    model = str(detector.describe().get("model", ""))
    if not model.lower().endswith((".yaml", ".yml")):
        return []
    return [f"{model} is a model config: random weights, for speed work only (it detects nothing meaningful and its "
            "classes are numbers); use your own trained weights, or `default`"]


def warnings_for(sources: list[str], source_list, recursive: bool) -> list[str]:
    """What a user should hear about inputs that were not there: an empty folder, images only in subfolders."""
    if source_list.items:
        return []
    named = ", ".join(sources[:3]) + (" ..." if len(sources) > 3 else "")
    if source_list.subfolders and not recursive:
        return [f"no images or videos in {named} itself; {len(source_list.subfolders)} subfolders were not searched "
                "(--recursive searches them)"]
    return [f"no images or videos found in {named}"]
