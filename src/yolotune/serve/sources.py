"""Stream sources: video files (optionally looped or paced), network URLs, V4L2 cameras and watched image folders.

Each source runs in its own thread (PyAV and Pillow release the GIL while decoding) and puts decoded RGB frames into
its bounded queue. Live sources that fail are reopened with exponential backoff and full jitter; a file that ends
finishes its stream; a file that cannot be read fails it with the reason. Nothing a source does stops the others.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from yolotune.serve.queues import FrameQueue, StreamFrame

LIVE_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


@dataclass
class SourceSpec:
    """What to read. ``kind``: file, url, camera or folder. Live kinds (url, camera) drop the oldest frames when
    the pipeline is behind; files and folders block their reader instead and never drop."""

    uri: str
    kind: str
    name: str
    loop: bool = False  # files: start again at the end
    realtime: bool = False  # files: deliver at the file's frame rate, like a camera (for planning and soak tests)
    named: bool = True  # a name given (NAME=SOURCE, or by code): kept as given; parse_source's defaults may change

    @property
    def live(self) -> bool:
        return self.kind in ("url", "camera")


# A stream's name is a folder under --out and a Prometheus label: a plain word, never "." or "..", never a path.
STREAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def parse_source(text: str, name: str | None = None, loop: bool = False, realtime: bool = False) -> SourceSpec:
    """A --source argument: a URL (rtsp/rtmp/http/udp/...), /dev/videoN or v4l2:N, a folder to watch, or a file;
    ``NAME=SOURCE`` names the stream. The name is checked, and default names made unique, by ``name_streams``."""
    text = text.strip()
    if name is None:
        name, text = _split_name(text)
    named = name is not None
    if text.lower().startswith(LIVE_SCHEMES):
        spec = SourceSpec(text, "url", "")
    elif text.startswith("v4l2:") or text.startswith("/dev/video"):
        device = text[5:] if text.startswith("v4l2:") else text
        spec = SourceSpec(f"/dev/video{device}" if device.isdigit() else device, "camera", "")
    elif Path(text).is_dir():
        spec = SourceSpec(text, "folder", "")
    else:
        spec = SourceSpec(text, "file", "", loop=loop, realtime=realtime)
    spec.name, spec.named = (name, True) if named else (default_name(spec), False)
    return spec


def _split_name(text: str) -> tuple[str | None, str]:
    """``NAME=SOURCE`` -> (NAME, SOURCE); anything else, and a path that exists as typed, is the source alone."""
    head, sep, rest = text.partition("=")
    if not sep or not rest.strip() or "://" in head or Path(text).exists():
        return None, text
    return head.strip(), rest.strip()


def read_source_list(path: str | Path) -> list[str]:
    """Sources from a text file, one per line: ``SOURCE``, ``NAME=SOURCE`` or ``NAME<tab>SOURCE``; blank lines and
    # comments ignored."""
    lines = Path(path).read_text().splitlines()
    out = []
    for line in lines:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        name, tab, source = entry.partition("\t")
        out.append(f"{name.strip()}={source.strip()}" if tab and source.strip() else entry)
    return out


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed meanwhile
        return float("inf")


def _clean(text: str) -> str:
    """A name from any text: spaces to '_', anything but letters, digits, '.', '_', '-' to '-', no leading dots."""
    text = re.sub(r"\s+", "_", text.strip())
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", text)
    text = re.sub(r"-{2,}", "-", text).strip("-._")
    return text[:64].rstrip("-._")


def _name_parts(spec: SourceSpec) -> list[str]:
    """What a default name is made of, most specific last: a URL's host, port and path (never its credentials or
    query), a camera's device, a file's folders and stem."""
    if spec.kind == "url":
        u = urllib.parse.urlsplit(spec.uri)
        try:
            port = u.port
        except ValueError:
            port = None
        segments = [p for p in u.path.split("/") if p not in ("", ".", "..")]
        return [p for p in [u.hostname or "", str(port) if port else "", *segments] if p] or [u.scheme]
    path = Path(os.path.abspath(spec.uri))
    if spec.kind == "camera":
        return [path.name]
    parents = [p for p in path.parent.parts if p not in ("/", "")]
    return parents + [path.stem if spec.kind == "file" and path.suffix else path.name]


def default_name(spec: SourceSpec, depth: int = 0) -> str:
    """A readable, safe name: a file's stem (with ``depth`` of its folders before it), a URL's host-port-path."""
    parts = _name_parts(spec)
    keep = parts if spec.kind in ("url", "camera") else parts[-(depth + 1):]
    return _clean("-".join(keep)) or spec.kind


def name_streams(specs: list[SourceSpec]) -> list[SourceSpec]:
    """Give every stream a unique, safe name (case-insensitively: file systems may be). Names the user gave are
    checked and kept; default names of files with the same stem take on their folders (a/clip, b/clip ->
    a-clip, b-clip); what still collides gets -2, -3, ..."""
    taken: set[str] = set()
    for s in specs:
        if not s.named:
            continue
        if not STREAM_NAME.fullmatch(s.name or "") or s.name.strip(".") == "":
            raise ValueError(f"{s.name!r} is not a valid stream name (NAME=SOURCE: a letter or digit, then up to 63 "
                             "letters, digits, '.', '_' or '-'; if this is a file, it does not exist)")
        if s.name.lower() in taken:
            raise ValueError(f"stream name {s.name!r} given twice")
        taken.add(s.name.lower())
    defaults = [s for s in specs if not s.named]
    names = {id(s): default_name(s) for s in defaults}
    groups: dict[str, list[SourceSpec]] = {}
    for s in defaults:
        groups.setdefault(names[id(s)].lower(), []).append(s)
    for group in groups.values():
        if len(group) < 2 or any(s.kind in ("url", "camera") for s in group):
            continue
        for depth in (1, 2, 3):  # the fewest folders that tell them apart
            tried = [default_name(s, depth) for s in group]
            if len({t.lower() for t in tried}) == len(tried):
                names.update({id(s): t for s, t in zip(group, tried)})
                break
    for s in defaults:
        name, k = names[id(s)], 1
        while name.lower() in taken:
            k += 1
            name = f"{names[id(s)][:60]}-{k}"
        s.name = name
        taken.add(name.lower())
    return specs


@dataclass
class Backoff:
    """Exponential backoff with full jitter (AWS architecture blog): delay = uniform(0, min(cap, base * 2**n))."""

    base_s: float = 0.5
    cap_s: float = 30.0
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int) -> float:
        return self.rng.uniform(0.0, min(self.cap_s, self.base_s * (2.0 ** attempt)))


@dataclass
class SourceStatus:
    state: str = "starting"  # starting, running, reconnecting, finished, failed, stopped
    frames: int = 0
    reconnects: int = 0
    last_error: str | None = None
    lag_s: float = 0.0  # realtime files: how far delivery is behind the file's clock now
    max_lag_s: float = 0.0  # and at worst


class I420Picture:
    """A decoded yuv420p frame still in FFmpeg's buffers. A decoder process copies its three planes straight into a
    ring slot: one copy instead of two (``to_ndarray``'s, then the slot's), about 40% less copying per frame."""

    dtype = np.dtype(np.uint8)

    def __init__(self, frame):
        self.frame = frame
        self.shape = (frame.height * 3 // 2, frame.width)
        self.nbytes = self.shape[0] * self.shape[1]

    def write_into(self, dst: np.ndarray) -> None:
        """The planes (Y, then U, then V, rows without FFmpeg's padding) into ``dst``, laid out as
        ``to_ndarray(format="yuv420p")`` lays them."""
        flat, off = dst.reshape(-1), 0
        for plane in self.frame.planes:
            rows, width = plane.height, plane.width
            src = np.frombuffer(plane, np.uint8, count=rows * plane.line_size).reshape(rows, plane.line_size)
            flat[off : off + rows * width].reshape(rows, width)[...] = src[:, :width]
            off += rows * width


def decoder_threads(n_sources: int, cores: int | None = None) -> int:
    """FFmpeg threads per decoder: one source gets them all (FFmpeg's choice); many share the cores. Measured on
    the H100 machine (16 cores, 720p H.264): 100 decoders of FFmpeg's choice (a thread per core each) gave 2,318
    frames/s in one process against 3,011 single-threaded, and one decoder 2,070 threaded against 514."""
    cores = cores or os.cpu_count() or 1
    return 0 if n_sources <= 1 else max(1, cores // n_sources)


class SourceWorker(threading.Thread):
    """Reads one source into its queue until it ends, fails for good, or ``stop`` is set."""

    def __init__(self, index: int, spec: SourceSpec, queue: FrameQueue, stop: threading.Event,
                 open_timeout_s: float = 10.0, read_timeout_s: float = 10.0, max_retries: int | None = None,
                 backoff: Backoff | None = None, on_event: Callable[[int, str, str], None] | None = None,
                 pixel_format: str = "rgb24", decoder_threads: int = 0):
        super().__init__(name=f"source-{index}-{spec.name}", daemon=True)
        self.index, self.spec, self.queue, self.stop_event = index, spec, queue, stop
        self.timeouts = (open_timeout_s, read_timeout_s)
        self.max_retries = max_retries  # live sources: None = retry for as long as the run lasts
        self.backoff = backoff or Backoff()
        self.status = SourceStatus()
        self.on_event = on_event or (lambda _i, _state, _msg: None)
        self._next_frame = 0
        # a decoder process's slot writer copies I420 planes straight from FFmpeg's buffers (I420Picture)
        self.pictures = getattr(queue, "takes_pictures", False)
        # "yuv420p": the decoder's own planes, converted on the GPU (half the bytes, no CPU colour conversion)
        self.pixel_format = pixel_format
        self.decoder_threads = decoder_threads  # FFmpeg threads for this decoder; 0: FFmpeg's choice (one per core)

    def _set(self, state: str, message: str = "") -> None:
        self.status.state = state
        if state in ("reconnecting", "failed"):
            self.status.last_error = message
        self.on_event(self.index, state, message)

    def run(self) -> None:
        attempt = 0
        try:
            while not self.stop_event.is_set():
                try:
                    delivered = 0
                    for image, pts in self._frames():
                        if not delivered:
                            self._set("running")
                        delivered += 1
                        attempt = 0  # a source that delivers again starts its backoff afresh
                        if not self._deliver(image, pts):
                            return  # stopped
                    if self.stop_event.is_set():
                        return
                    if self.spec.live or (self.spec.loop and delivered):
                        raise EOFError("stream ended")
                    if not delivered and self.spec.kind == "file":
                        self._set("failed", "no decodable frames")
                        return
                    if self.spec.kind != "folder":
                        self._set("finished")
                        return
                except Exception as e:  # noqa: BLE001  (any failure of one source is that source's state)
                    if self.stop_event.is_set():
                        return  # an error while shutting down is not the source's fault
                    message = f"{type(e).__name__}: {e}"
                    if self.spec.kind == "file" and not (self.spec.loop and isinstance(e, EOFError)):
                        # a file that cannot be opened or breaks mid-way is not going to heal: report it once
                        self._set("failed", message)
                        return
                    if isinstance(e, EOFError) and self.spec.kind == "file":
                        continue  # looping: start again at once
                    if self.max_retries is not None and attempt >= self.max_retries:
                        self._set("failed", f"{message} (gave up after {attempt} retries)")
                        return
                    self._set("reconnecting", message)
                    self.status.reconnects += 1
                    if self.stop_event.wait(self.backoff.delay(attempt)):
                        return
                    attempt += 1
        finally:
            if self.status.state not in ("finished", "failed"):
                self.status.state = "stopped"
            self.queue.close()

    def _deliver(self, image: np.ndarray, pts: float | None) -> bool:
        frame = StreamFrame(self.index, self._next_frame, image, time.perf_counter(), pts)
        self._next_frame += 1
        self.status.frames += 1
        return self.queue.put(frame, self.stop_event)

    def _frames(self) -> Iterator[tuple[np.ndarray, float | None]]:
        if self.spec.kind == "folder":
            yield from self._folder_frames()
        else:
            yield from self._av_frames()

    def _av_frames(self) -> Iterator[tuple[np.ndarray, float | None]]:
        import av

        options = {"rtsp_transport": "tcp"} if self.spec.uri.startswith("rtsp") else {}
        fmt = "v4l2" if self.spec.kind == "camera" else None
        container = av.open(self.spec.uri, format=fmt, options=options, timeout=self.timeouts)
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if self.decoder_threads > 0:
                stream.codec_context.thread_count = self.decoder_threads
            rate = float(stream.average_rate or stream.guessed_rate or 30)
            start = time.perf_counter()
            for n, frame in enumerate(container.decode(stream)):
                if self.stop_event.is_set():
                    return
                if self.spec.realtime:  # a file played like a camera: frame n is due at n / rate
                    due = start + n / rate
                    wait = due - time.perf_counter()
                    if wait > 0:
                        self.stop_event.wait(wait)
                    self.status.lag_s = max(0.0, -wait)
                    self.status.max_lag_s = max(self.status.max_lag_s, self.status.lag_s)
                even = frame.width % 2 == 0 and frame.height % 2 == 0  # I420 needs even sizes
                if self.pictures and even and self.pixel_format == "yuv420p" and frame.format.name == "yuv420p":
                    yield I420Picture(frame), frame.time
                else:
                    yield frame.to_ndarray(format=self.pixel_format if even else "rgb24"), frame.time
        finally:
            container.close()

    def _folder_frames(self, poll_s: float = 0.25) -> Iterator[tuple[np.ndarray, float | None]]:
        """Images already in the folder, then new ones as they appear (in name order); unreadable ones are
        reported as events and skipped."""
        from yolotune.io.decode import decode_with_pil

        seen: set[str] = set()
        folder = Path(self.spec.uri)
        while not self.stop_event.is_set():
            # files still being written (modified in the last 0.25 s) wait for the next look
            settled = time.time() - 0.25
            fresh = sorted(p for p in folder.iterdir()
                           if p.suffix.lower() in IMAGE_SUFFIXES and p.name not in seen and _mtime(p) < settled)
            for path in fresh:
                seen.add(path.name)
                try:
                    yield decode_with_pil(path.read_bytes()), None
                except Exception as e:  # noqa: BLE001
                    self.on_event(self.index, "bad-input", f"{path.name}: {type(e).__name__}: {e}")
            if not fresh:
                self.stop_event.wait(poll_s)
