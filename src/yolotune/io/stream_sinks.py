"""Per-stream outputs of ``yolotune run``: ``<out>/<stream>/detections.jsonl`` (one line per frame, and one per
source event such as a reconnect or a failure) and, when asked, ``<out>/<stream>/videos/<stream>.mp4`` annotated."""

from __future__ import annotations

import json
import time
from pathlib import Path

from yolotune.io.sinks import AnnotatedVideoSink
from yolotune.io.streams import StreamFrame
from yolotune.types import Detections

STREAM_FORMATS = ("jsonl", "video")
BAD_EVENTS = ("failed", "reconnecting", "never-connected", "bad-input", "decode-gap", "engine-error", "sink-error")


class StreamSinks:
    def __init__(self, out: Path, name: str, formats: tuple[str, ...], fps: float = 25.0):
        bad = [f for f in formats if f not in STREAM_FORMATS]
        if bad:
            raise ValueError(f"unknown stream output {', '.join(bad)}; choose from {', '.join(STREAM_FORMATS)}")
        from yolotune.io.stream_specs import STREAM_NAME

        self.name = name
        self.dir = out / name
        # a name is one plain folder under --out: nothing a source is called may write anywhere else
        if not STREAM_NAME.fullmatch(name or "") or self.dir.resolve().parent != out.resolve():
            raise ValueError(f"stream name {name!r} is not a plain folder name under {out}")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(self.dir / "detections.jsonl", "w", encoding="utf-8") if "jsonl" in formats else None
        self.video = AnnotatedVideoSink(self.dir, fps=max(1, round(fps))) if "video" in formats else None
        self.wants_images = self.video is not None

    def write(self, frame: StreamFrame, det: Detections, latency_s: float) -> None:
        if self.jsonl is not None:
            self.jsonl.write(json.dumps(result_row(self.name, frame, det, latency_s), ensure_ascii=False) + "\n")
        if self.video is not None:
            started = self.video.write_frame(self.name, _rgb(frame.image), det)
            if started and frame.index > 0:  # a new frame size (after a reconnect): a new part, frames kept whole
                self.event("video-part", f"frame size {frame.image.shape[1]}x{_height(frame.image)}: {started}")

    def event(self, state: str, message: str, when: float | None = None) -> None:
        """A source event as a record in the stream's output, stamped with when it happened: errors travel with
        the results."""
        self.write_row(event_row(self.name, state, message, when))

    def write_row(self, row: dict) -> None:
        """A record made elsewhere (result_row, event_row: a Ray actor's); events are flushed at once. Nothing is
        written once closed (a source's last event after the run)."""
        if self.jsonl is not None and not self.jsonl.closed:
            self.jsonl.write(json.dumps(row, ensure_ascii=False) + "\n")
            if "event" in row:
                self.jsonl.flush()

    def close(self) -> list[str]:
        paths = []
        if self.jsonl is not None and not self.jsonl.closed:
            self.jsonl.close()
            paths.append(self.jsonl.name)
        if self.video is not None:
            paths += self.video.close()
        return paths


class RecordSink:
    """A stream's records kept in memory (``append(row)``) instead of written: a Ray actor's, until drained."""

    def __init__(self, name: str, append):
        self.name, self.append = name, append
        self.wants_images = False

    def write(self, frame: StreamFrame, det: Detections, latency_s: float) -> None:
        self.append(result_row(self.name, frame, det, latency_s))

    def event(self, state: str, message: str, when: float | None = None) -> None:
        self.append(event_row(self.name, state, message, when))

    def close(self) -> list[str]:
        return []


def result_row(name: str, frame: StreamFrame, det: Detections, latency_s: float) -> dict:
    """A frame's record: its stream, number, time in the source, wall time, latency and detections."""
    row = {"stream": name, "frame": frame.index, "pts": frame.pts, "time": _iso(frame.captured_at),
           "latency_ms": round(latency_s * 1e3, 3), **det.to_dict()}
    row.pop("path", None)
    return row


def event_row(name: str, state: str, message: str, when: float | None = None) -> dict:
    """A source event's record (a reconnect, a failure, a stream moved), stamped with when it happened."""
    return {"stream": name, "event": state, "ok": state not in BAD_EVENTS, "message": message,
            "time": _iso(when or time.time())}


def _iso(when: float) -> str | None:
    """Local time with milliseconds and the UTC offset: 2026-12-01T19:28:23.412+00:00."""
    import datetime

    return datetime.datetime.fromtimestamp(when).astimezone().isoformat(timespec="milliseconds") if when else None


def _height(image) -> int:
    from yolotune.ops.color import is_i420

    return image.shape[0] * 2 // 3 if is_i420(image) else image.shape[0]


def _rgb(image):
    """RGB pixels for drawing (frames may travel as I420 planes)."""
    from yolotune.ops.color import i420_to_rgb, is_i420

    if not is_i420(image):
        return image
    import torch

    return i420_to_rgb(torch.from_numpy(image)[None])[0].permute(1, 2, 0).numpy()
