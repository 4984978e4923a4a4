"""Stream sources: video files (optionally looped or paced), network URLs, V4L2 cameras and watched image folders.

Each source runs in its own thread (PyAV and Pillow release the GIL while decoding) and puts decoded frames
(``StreamFrame``) into its bounded queue (any object with ``put(frame, stop)`` and ``close()``: serve/queues.py's,
or a decoder process's ring). Video goes through io/video.py's reader: damaged packets cost only their frames (a ``decode-gap``
event), and frames are numbered by their timestamps across loops and reconnects. Camera-like sources (live ones,
and files in real time) decode on demand: past the pipeline's capacity, frames are dropped before they are decoded
and counted. Live sources that fail are reopened with exponential backoff and full jitter; a file that ends
finishes its stream; a file that cannot be read fails it with the reason. Nothing a source does stops the others.
"""

from __future__ import annotations

import dataclasses
import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from yolotune.io.stream_specs import SourceSpec
from yolotune.io.nvdec import NV12Picture
from yolotune.io.video import CATCH_UP, FrameGap, VideoReader


@dataclass
class StreamFrame:
    """A decoded frame of one stream, on its way through a bounded queue to the engine."""

    stream: int
    index: int  # frame number within its stream, from 0
    image: np.ndarray  # [h, w, 3] uint8 RGB, or [h * 3 / 2, w] uint8 I420 planes
    decoded_at: float  # perf_counter when decoding finished: latency is measured from here
    pts: float | None = None  # presentation time in the source, seconds
    slot: tuple | None = None  # where a decoder process left the pixels (serve/decoders.py), until given back
    on_drop: Callable[[list["StreamFrame"]], None] | None = None  # gives the slot back when the frame is dropped
    # where its latency goes: decoded_at -> queued_at (handed over: a decoder process's pipe) -> batched_at (taken
    # into a batch) -> result
    queued_at: float = 0.0
    batched_at: float = 0.0
    captured_at: float = 0.0  # wall clock (time.time) when it arrived or was due: the "time" of its record


class Admission:
    """How many frames a camera-like source may decode and deliver now (``room(held)``, where ``held`` is how many
    packets it holds back undecoded): the room in its queue, within a limit. The limit halves (down to ``RUN``), and
    the queue drops its oldest frames down to it, when the source holds back more packets than its whole queue takes
    (it is far behind: the frames waiting are stale); it grows by one when the queue ran dry and
    the packet before found room too (the consumer keeps pace). Past capacity a stream so keeps a short run of frames waiting, and below it the whole queue absorbs bursts
    and slow batches. ``target`` gives ``capacity``, ``outstanding()`` and ``set_limit(n)``."""

    RUN = 3  # frames decoded from one keyframe when far behind (io/video.py): the limit never goes below it

    def __init__(self, target):
        self.target = target
        self.capacity = max(1, int(target.capacity))
        self.limit = self.capacity
        self.run = min(self.RUN, self.capacity)
        self.shrunk = False  # already halved while holding back this time
        self.kept_pace = True  # the last packet found room (no hold since): growing the limit is safe

    @property
    def far_behind(self) -> bool:
        """Held back (the limit shrank): a frame from a keyframe is decoded only with the run after it (io/video.py)."""
        return self.limit < self.capacity

    def room(self, held: int = 1) -> int:
        waiting = self.target.outstanding()
        if waiting >= self.limit:
            if held > self.capacity and not self.shrunk:
                self.limit = max(self.run, self.limit // 2)
                self.target.set_limit(self.limit)
                self.shrunk = True
            self.kept_pace = False
            return 0
        self.shrunk = False
        free = self.limit - waiting
        # the last packet found room too: the consumer keeps pace with the stream, so it may have more
        if self.kept_pace and waiting == 0 and held <= free and self.limit < self.capacity:
            self.limit += 1
            self.target.set_limit(self.limit)
            free += 1
        self.kept_pace = True
        return free


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
# states a source reports; "never-connected": a live source that ran out of time or tries before its first frame
SOURCE_STATES = ("starting", "running", "reconnecting", "finished", "failed", "stopped", "never-connected")


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed meanwhile
        return float("inf")


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
    """What a source has done so far; a decoder process sends it whole with every event."""

    state: str = "starting"  # one of SOURCE_STATES
    frames: int = 0  # delivered into the queue
    received: int = 0  # frames the source sent (video packets read)
    dropped: int = 0  # dropped here, before they were decoded or delivered (camera-like sources past capacity)
    frames_lost: int = 0  # frames that could not be decoded (damage, truncation): decode-gap events
    outages: int = 0  # times a source that was delivering lost its stream
    reconnects: int = 0  # outages it came back from
    attempts: int = 0  # times it tried to reopen
    connected: bool = False  # delivered at least one frame
    error: str | None = None  # what is wrong now (None while it runs)
    last_error: str | None = None  # the last error seen, kept after recovery
    lag_s: float = 0.0  # how late the last frame was delivered: behind a real-time file's clock, or since it arrived
    max_lag_s: float = 0.0  # and at worst
    decoder: str = ""  # where its video is decoded now: "nvdec" (the GPU's engines) or "cpu"

    def snapshot(self) -> dict:
        return dataclasses.asdict(self)


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
    """FFmpeg threads per decoder: one source gets them all (FFmpeg's choice); many share the cores, as a thread
    per core each would oversubscribe them (benchmarks/results/serve/decode_workers_h100.json)."""
    cores = cores or os.cpu_count() or 1
    return 0 if n_sources <= 1 else max(1, cores // n_sources)


class SourceWorker(threading.Thread):
    """Reads one source into its queue until it ends, fails for good, or ``stop`` is set."""

    def __init__(self, index: int, spec: SourceSpec, queue, stop: threading.Event,
                 open_timeout_s: float = 10.0, read_timeout_s: float = 10.0, max_retries: int | None = None,
                 backoff: Backoff | None = None, on_event: Callable[..., None] | None = None,
                 pixel_format: str = "rgb24", decoder_threads: int = 0, nice: int = 0, catch_up: int = CATCH_UP,
                 on_demand: bool = True, video_decoder=None):
        super().__init__(name=f"source-{index}-{spec.name}", daemon=True)
        self.index, self.spec, self.queue, self.stop_event = index, spec, queue, stop
        self.timeouts = (open_timeout_s, read_timeout_s)
        self.max_retries = max_retries  # live sources: None = retry for as long as the run lasts
        self.backoff = backoff or Backoff()
        self.status = SourceStatus()
        self.on_event = on_event or (lambda _i, _state, _msg, _when, _status: None)
        self._next_frame = 0  # the number the next opening's first frame starts from (loops, reconnects)
        # a stream resumed elsewhere (spec.start_frame): a file skips the frames before it (its first opening only);
        # live sources and folders number their frames on from it
        self._skip = spec.start_frame if spec.kind == "file" else 0
        if spec.kind != "file":
            self._next_frame = spec.start_frame
        self._pace_from: float | None = None  # realtime files: when the current pass's first frame is due
        # a decoder process's slot writer copies I420 planes straight from FFmpeg's buffers (I420Picture)
        self.pictures = getattr(queue, "takes_pictures", False)
        # "yuv420p": the decoder's own planes, converted on the GPU (half the bytes, no CPU colour conversion)
        self.pixel_format = pixel_format
        self.decoder_threads = decoder_threads  # FFmpeg threads for this decoder; 0: FFmpeg's choice (one per core)
        self.nice = nice  # added to this thread's niceness (and its FFmpeg threads'): the engine comes first
        self.catch_up = catch_up
        # io/nvdec.py's factory: video decoded on NVDEC into device memory (a stream it cannot take, on the CPU)
        self.video_decoder = video_decoder
        # camera-like: decode only what the queue has room for (io/video.py), so drops cost no decoding
        self.admission = Admission(queue) if on_demand and spec.drops and spec.kind != "folder" else None

    def _set(self, state: str, message: str = "") -> None:
        st = self.status
        st.state = state
        if state in ("reconnecting", "failed", "never-connected"):
            st.error = st.last_error = message or st.error
        elif state == "running":
            st.error = None  # recovered: what went wrong stays in last_error
        self.on_event(self.index, state, message, time.time(), st.snapshot())

    def run(self) -> None:
        _lower_priority(self.nice)
        attempt = 0
        st = self.status
        try:
            while not self.stop_event.is_set():
                delivered_before = st.frames
                try:
                    self._read_once()
                    if self.stop_event.is_set():
                        return
                    delivered = st.frames - delivered_before
                    if self.spec.live or (self.spec.loop and delivered):
                        raise EOFError("stream ended")
                    if not delivered and self.spec.kind == "file" and not self.spec.start_frame:
                        self._set("failed", "no decodable frames")
                        return
                    if self.spec.kind != "folder":
                        self._set("finished")
                        return
                except Exception as e:  # noqa: BLE001  (any failure of one source is that source's state)
                    if self.stop_event.is_set():
                        return  # an error while shutting down is not the source's fault
                    message = self._describe(e)
                    if self.spec.kind == "file" and not (self.spec.loop and isinstance(e, EOFError)):
                        # a file that cannot be opened or breaks mid-way is not going to heal: report it once
                        self._set("failed", message)
                        return
                    if isinstance(e, EOFError) and self.spec.kind == "file":
                        continue  # looping: start again at once
                    if st.frames > delivered_before:
                        st.outages += 1  # it was delivering: one outage, however many attempts it takes
                        attempt = 0
                    if self.max_retries is not None and attempt >= self.max_retries:
                        never = "never connected: " if not st.connected else ""
                        self._set("failed", f"{never}{message} (gave up after {attempt} attempts)")
                        return
                    self._set("reconnecting", message)
                    if self.stop_event.wait(self.backoff.delay(attempt)):
                        return
                    attempt += 1
                    st.attempts += 1
        finally:
            if st.state not in ("finished", "failed"):
                st.state = "stopped" if st.connected or not self.spec.live else "never-connected"
                if st.state == "never-connected":
                    st.error = f"never connected ({st.attempts} attempts): {st.last_error or 'no frame came'}"
            self.queue.close()

    def _describe(self, e: Exception) -> str:
        """The reason in words; FFmpeg's interrupt on a timeout ("Immediate exit requested") says what timed out."""
        import av

        if isinstance(e, (av.error.ExitError, TimeoutError)) or "Immediate exit requested" in str(e):
            opening = getattr(self, "_phase", "opening") == "opening"
            seconds = self.timeouts[0] if opening else self.timeouts[1]
            return (f"timed out: no answer within {seconds:g} s of opening" if opening
                    else f"timed out: no data for {seconds:g} s")
        return f"{type(e).__name__}: {e}"

    def _deliver(self, image, index: int, pts: float | None, due: float | None) -> bool:
        now = time.perf_counter()
        st = self.status
        if due is not None and (self.spec.realtime or self.spec.live):
            st.lag_s = max(0.0, now - due)
            st.max_lag_s = max(st.max_lag_s, st.lag_s)
        frame = StreamFrame(self.index, index, image, now, pts, captured_at=time.time() - (now - due if due else 0.0))
        if not st.connected or st.state != "running":
            if st.connected and st.state == "reconnecting":
                st.reconnects += 1
            st.connected = True
            self._set("running")
        st.frames += 1
        return self.queue.put(frame, self.stop_event)

    def _read_once(self) -> None:
        if self.spec.kind == "folder":
            for image in self._folder_frames(skip=self.spec.start_frame):
                if not self._deliver(image, self._next_frame, None, None):
                    return
                self._next_frame += 1
            return
        self._read_video()

    def _read_video(self) -> None:
        spec, st = self.spec, self.status
        options = {"rtsp_transport": "tcp"} if spec.uri.startswith("rtsp") else {}
        self._phase = "opening"
        reader = VideoReader(spec.uri, format="v4l2" if spec.kind == "camera" else None, options=options,
                             timeout=self.timeouts, threads=self.decoder_threads, live=spec.live,
                             decoder=self.video_decoder)
        self._phase = "reading"
        self._note_decoder(reader)
        if spec.realtime and self._pace_from is None:
            self._pace_from = time.perf_counter()
        start = 0
        if self._skip:  # resumed: a looped file from its pass that holds the frame, any other from its start
            passes = self._skip // reader.expected_frames if spec.loop and reader.expected_frames else 0
            self._next_frame = passes * (reader.expected_frames or 0)
            start, self._skip = self._skip - self._next_frame, 0
        base, last, counted = self._next_frame, start - 1, [0, 0]
        try:
            for item in reader.frames(self.admission, self._pace_from if spec.realtime else None, self.stop_event,
                                      self.catch_up, start):
                self._count(reader, counted)
                if reader.decoded_on != st.decoder:  # NVDEC broke mid-stream: the CPU decodes from here
                    self._note_decoder(reader)
                if isinstance(item, FrameGap):
                    st.frames_lost += item.frames
                    gap = FrameGap(base + item.first, base + item.last, item.reason)
                    self.on_event(self.index, "decode-gap", gap.message, time.time(), st.snapshot())
                    last = max(last, item.last)
                    continue
                last = item.index
                if not self._deliver(self._image(item.picture), base + item.index, item.time, item.due):
                    return
        finally:
            self._count(reader, counted)
            self._next_frame = base + last + 1
            if spec.realtime and self._pace_from is not None:
                self._pace_from += reader.duration_s  # the next pass continues the clock: lag does not reset
            reader.close()

    def _note_decoder(self, reader: VideoReader) -> None:
        """Where this stream is decoded now; a fallback to the CPU (NVDEC cannot take the stream, or broke on it) is
        said once per change, and a broken session is not tried again on a reopening."""
        st = self.status
        if reader.decoded_on == st.decoder:
            return
        st.decoder = reader.decoded_on
        if reader.fallback:
            self.on_event(self.index, "decoder", f"decoded on the CPU: {reader.fallback}", time.time(), st.snapshot())
            if reader.nvdec_broke:
                self.video_decoder = None

    def _count(self, reader: VideoReader, counted: list[int]) -> None:
        """Fold the reader's packets read and frames skipped into the status (cumulative over openings)."""
        s = reader.stats
        received, dropped = s.packets, s.skipped + s.discarded
        self.status.received += received - counted[0]
        self.status.dropped += dropped - counted[1]
        counted[0], counted[1] = received, dropped

    def _image(self, picture):
        if isinstance(picture, NV12Picture):  # decoded on NVDEC: stays on the device
            return picture
        even = picture.width % 2 == 0 and picture.height % 2 == 0  # I420 needs even sizes
        if self.pictures and even and self.pixel_format == "yuv420p" and picture.format.name == "yuv420p":
            return I420Picture(picture)
        return picture.to_ndarray(format=self.pixel_format if even else "rgb24")

    def _folder_frames(self, poll_s: float = 0.25, skip: int = 0) -> Iterator[np.ndarray]:
        """Images already in the folder, then new ones as they appear (in name order); unreadable ones are
        reported as events and skipped. ``skip``: images already processed elsewhere (a resumed stream), by the
        name order of those there now."""
        from yolotune.io.decode import decode_with_pil

        seen: set[str] = set()
        folder = Path(self.spec.uri)
        while not self.stop_event.is_set():
            # files still being written (modified in the last 0.25 s) wait for the next look
            settled = time.time() - 0.25
            fresh = sorted(p for p in folder.iterdir()
                           if p.suffix.lower() in IMAGE_SUFFIXES and p.name not in seen and _mtime(p) < settled)
            for path in fresh[:skip]:
                seen.add(path.name)
            fresh, skip = fresh[skip:], 0
            for path in fresh:
                seen.add(path.name)
                try:
                    yield decode_with_pil(path.read_bytes())
                except Exception as e:  # noqa: BLE001
                    self.on_event(self.index, "bad-input", f"{path.name}: {type(e).__name__}: {e}", time.time(),
                                  self.status.snapshot())
            if not fresh:
                self.stop_event.wait(poll_s)


def _lower_priority(nice: int) -> None:
    """Raise this thread's niceness by ``nice`` (Linux: per thread, inherited by the FFmpeg threads it starts), so
    a decoder yields its core to the engine thread when both want it."""
    if nice <= 0 or not hasattr(os, "setpriority") or not hasattr(threading, "get_native_id"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError:  # not allowed here: decode at the runtime's priority
        pass
