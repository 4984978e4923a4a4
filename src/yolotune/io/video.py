"""Video through PyAV, for ``predict`` and ``run`` alike.

Packets are demuxed and each is decoded on its own, so a damaged packet costs its own frames, not the rest of the
file (``container.decode`` stops at the first one): the frames lost are reported as a gap, first to last. Frames are
numbered from the stream's timestamps, so frames after a gap keep their numbers, and a file that ends before the
frames its index declares is reported as truncated.

A live source can decode on demand (``demand``): every packet is still read as it arrives, so the source never
falls behind, but a packet is decoded only while the consumer has room for a frame. A keyframe makes the packets
held before it unneeded. When room comes back, the held packets are decoded and the newest frames that fit are
delivered; when that would take more than ``catch_up`` decodes, or the consumer is far behind (``demand.far_behind``)
and a keyframe starts them, only that keyframe (if under a second old) is decoded, or the rest skipped to the next. Past its capacity a pipeline so spends no CPU on frames it would drop, and delivers none much older
than the stream: a stream whose keyframes are far apart gives, deep in overload, about one frame per keyframe (benchmarks/results/serve/live_overload_cpu.json).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Iterator, Protocol

import numpy as np

from yolotune.io.nvdec import NV12Picture, NvdecError, NvdecFailed, NvdecUnavailable
from yolotune.types import ErrorRecord, InputRef

CATCH_UP = 8  # decodes spent to reach the newest frame after a hold, before skipping to a keyframe instead
MAX_FRAME_AGE_S = 1.0  # on demand, a frame whose packet came longer ago than this is not delivered: it is stale
# packets since the last keyframe kept while NVDEC decodes, to decode them again on the CPU if its session breaks
# (a camera's second: ~30 packets, ~400 KB at 3 Mbit/s); past a longer group the CPU starts at the next keyframe
MAX_REPLAY = 300


@dataclass
class VideoFrame:
    index: int  # frame number in this opening of the stream, from its timestamps (the first frame is 0)
    time: float | None  # seconds since the stream's first frame
    picture: object  # av.VideoFrame, not converted yet (the consumer picks RGB or I420)
    due: float | None = None  # perf_counter when it was due (a paced file) or arrived (live); lag is measured from it


@dataclass
class FrameGap:
    """Frames ``first`` to ``last`` that could not be had: damaged packets, a jump in the timestamps, an early end."""

    first: int
    last: int
    reason: str

    @property
    def frames(self) -> int:
        return self.last - self.first + 1

    @property
    def message(self) -> str:
        span = f"frame {self.first}" if self.first == self.last else f"frames {self.first}-{self.last}"
        return f"{span} lost ({self.frames}): {self.reason}"


class NoVideoStream(Exception):
    pass


class Demand(Protocol):
    def room(self, held: int) -> int:
        """Frames the consumer would take now (0: hold), given ``held`` packets held back undecoded."""


@dataclass
class VideoStats:
    packets: int = 0  # video packets read
    decoded: int = 0  # frames out of the decoder
    skipped: int = 0  # packets never decoded: the consumer had no room (on demand)
    discarded: int = 0  # frames decoded while catching up, older than the newest that fit
    errors: int = 0  # packets the decoder refused
    late: int = 0  # frames that came out behind later ones (after damage): left out, so frames stay in order
    first_error: str | None = None
    gaps: list[FrameGap] = field(default_factory=list)


class VideoReader:
    """One opened video: a file, a URL or a device. Raises what PyAV raises when it cannot be opened."""

    def __init__(self, uri: str, format: str | None = None, options: dict | None = None,
                 timeout: tuple[float, float] | None = None, threads: int = 0, live: bool = False,
                 decoder=None):
        import av

        self.uri, self.live = uri, live
        self.container = av.open(uri, format=format, options=options or {}, timeout=timeout)
        try:
            if not self.container.streams.video:
                raise NoVideoStream("file has no video stream")
            self.stream = self.container.streams.video[0]
        except Exception:
            self.container.close()
            raise
        # ``decoder(stream)``: another decoder for the packets (io/nvdec.py's NVDEC); where it cannot take this
        # stream (NvdecUnavailable), FFmpeg decodes it and ``fallback`` says why
        self.codec, self.decoded_on, self.fallback = self.stream.codec_context, "cpu", None
        self._since_keyframe: list | None = []  # NVDEC's packets since the last keyframe (None: too many)
        self._resume_at: int | None = None  # after NVDEC broke: frames before this one were given already
        self._to_keyframe = False  # after NVDEC broke with no keyframe to decode again from: lost until one comes
        self.nvdec_broke = False  # NVDEC's session broke mid-stream (the CPU decodes from there)
        if decoder is not None:
            try:
                self.codec, self.decoded_on = decoder(self.stream), "nvdec"
            except NvdecUnavailable as e:
                self.fallback = str(e)
        self.stream.thread_type = "AUTO"  # FFmpeg frame threads; PyAV releases the GIL while decoding
        if threads > 0:
            self.stream.codec_context.thread_count = threads
        self.rate = float(self.stream.average_rate or self.stream.guessed_rate or 30)
        self.expected_frames = None if live else (int(self.stream.frames) or None)
        self.stats = VideoStats()
        self.duration_s = 0.0  # from the first frame to the end of the last one (for the next pass of a loop)

    def close(self) -> None:
        self.codec = None  # an NVDEC session ends with its stream
        self.container.close()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------ frames
    def frames(self, demand: Demand | None = None, pace_from: float | None = None,
               stop: threading.Event | None = None, catch_up: int = CATCH_UP,
               start: int = 0) -> Iterator[VideoFrame | FrameGap]:
        """Frames in order, and gaps where frames were lost. ``pace_from``: deliver each packet at pace_from + its
        time, as a camera would (a file played in real time). ``demand``: decode only what the consumer has room
        for (see the module's docstring); None decodes every frame. ``start``: the first frame number wanted (a
        file seeks to the keyframe before it; frames before it are decoded, not given)."""
        import av

        stream, codec = self.stream, self.stream.codec_context
        tb = float(stream.time_base or 0) or 1 / 90000
        self._origin = None  # pts of the first frame: frame times count from it
        self._next = max(0, start)  # the frame number expected next
        self._start = self._next
        if self._start and not self.live:
            self._seek_before(self._start, tb)
        self._errors_since = 0
        self._on_demand = demand is not None
        first_dts = None
        held: list = []  # on demand: packets read but not yet decoded, oldest first
        need_keyframe = False
        arrivals: dict[int, float] = {}  # packet pts -> when it arrived or was due (frames come out by pts)
        try:
            for packet in self.container.demux(stream):
                if stop is not None and stop.is_set():
                    return
                if packet.size == 0:  # the demuxer's end-of-stream marker
                    continue
                self.stats.packets += 1
                arrived = time.perf_counter()
                stamp = packet.dts if packet.dts is not None else packet.pts
                if stamp is not None:
                    first_dts = stamp if first_dts is None else first_dts
                    # the clip's length by its packets (frames left undecoded on demand count too)
                    self.duration_s = max(self.duration_s, (stamp - first_dts) * tb + 1 / self.rate)
                if pace_from is not None and stamp is not None:
                    arrived = pace_from + (stamp - first_dts) * tb
                    wait = arrived - time.perf_counter()
                    if wait > 0 and (stop.wait(wait) if stop is not None else time.sleep(wait)):
                        return
                if packet.pts is not None:
                    arrivals[packet.pts] = arrived
                    if len(arrivals) > 512:
                        arrivals.pop(next(iter(arrivals)))
                if demand is None:
                    yield from self._decoded([packet], tb, arrivals, deliver=None)
                    continue
                if packet.is_keyframe:  # a fresh start: what was held before it is not needed to decode on
                    self.stats.skipped += len(held)
                    held.clear()
                    need_keyframe = False
                elif need_keyframe:
                    self.stats.skipped += 1
                    continue
                held.append(packet)
                room = demand.room(len(held))
                if room <= 0:
                    continue  # hold: decoding it now would only feed a drop
                fresh = arrivals.get(held[0].pts, 0.0) > time.perf_counter() - MAX_FRAME_AGE_S
                far_behind = getattr(demand, "far_behind", False)
                if held[0].is_keyframe and (far_behind or len(held) > catch_up):
                    # The chain starts again at a keyframe, which costs ~8 P-frames to decode (23.5 vs 3.05 ms at
                    # 720p). Far behind, it waits until the queue takes a whole run, then decodes the keyframe and
                    # the frames after it (held, or as they come), so one keyframe serves several frames.
                    run = getattr(demand, "run", 1) if far_behind else 1
                    if room < run:
                        continue
                    if not fresh:
                        self.stats.skipped += len(held)
                        held, need_keyframe = [], True
                        continue
                    batch, held = held[:run], held[run:]
                elif len(held) > catch_up:  # too far behind to catch up: skip to the next keyframe
                    self.stats.skipped += len(held)
                    held, need_keyframe = [], True
                    continue
                else:
                    batch, held = held, []
                yield from self._decoded(batch, tb, arrivals, deliver=room)
            self.stats.skipped += len(held)  # the end came while they were held
            yield from self._decoded([None], tb, arrivals, deliver=None if demand is None else 1)  # flush
        except av.FFmpegError as e:
            if self.live or stop is not None and stop.is_set():
                raise  # a live stream that breaks is reconnected by its caller
            yield self._gap_to_end(f"the file is damaged past here ({_reason(e)})")
            return
        # truncated: fewer frames than its index declares; frames on demand left undecoded (every packet read) are
        # drops, counted as such
        expected = self.expected_frames
        whole = bool(expected) and self._on_demand and self.stats.packets >= expected - self._start
        if expected and self._next < expected and not whole:
            yield self._gap_to_end(f"the file ends early (truncated): {self._next} of {self.expected_frames} "
                                   "frames in its index")
        elif self._errors_since:
            gap = FrameGap(self._next, self._next + self._errors_since - 1, f"undecodable packets ({self.stats.first_error})")
            self.stats.gaps.append(gap)
            yield gap

    def _seek_before(self, index: int, tb: float) -> None:
        """Seek to the keyframe at or before frame ``index``, numbering frames from the file's first packet as a
        reading from the start would; where the file cannot seek, frames are decoded from the start instead."""
        import av

        try:
            first = next((p.pts for p in self.container.demux(self.stream) if p.pts is not None), None)
            if first is None:
                return
            self._origin = first
            self.container.seek(first + int(index / self.rate / tb), stream=self.stream, backward=True,
                                any_frame=False)
        except (av.FFmpegError, OSError):
            self._origin = None
            self.container.seek(0, stream=self.stream, backward=True, any_frame=False)

    def _gap_to_end(self, reason: str) -> FrameGap:
        last = max(self._next, (self.expected_frames or self._next + 1) - 1)
        gap = FrameGap(self._next, last, reason)
        self.stats.gaps.append(gap)
        return gap

    def _decoded(self, packets: list, tb: float, arrivals: dict, deliver: int | None) -> Iterator[VideoFrame | FrameGap]:
        """Decode ``packets`` (None flushes); with ``deliver``, only the newest ``deliver`` frames come out."""
        import av

        out: list[VideoFrame | FrameGap] = []
        for packet in packets:
            if self.decoded_on == "nvdec" and packet is not None:
                self._keep_for_replay(packet)
            elif self._to_keyframe and packet is not None:
                if not packet.is_keyframe:
                    self.stats.errors += 1
                    self._errors_since += 1
                    self.stats.first_error = self.stats.first_error or self.fallback
                    continue
                self._to_keyframe = False
            try:
                try:
                    pictures = self.codec.decode(packet)
                except NvdecFailed as e:
                    pictures = self._decode_on_cpu_from_keyframe(e, packet)
            except (av.FFmpegError, NvdecError) as e:
                if self.live and isinstance(e, av.FFmpegError) and not isinstance(e, av.error.InvalidDataError):
                    raise
                self.stats.errors += 1
                self._errors_since += 1
                self.stats.first_error = self.stats.first_error or _reason(e)
                continue
            for picture in pictures:
                self.stats.decoded += 1
                out.extend(self._numbered(picture, tb, arrivals))
        if deliver is not None:  # the newest that fit, none stale (a decoder's reordering delay holds old ones)
            oldest = time.perf_counter() - MAX_FRAME_AGE_S
            frames = [f for f in out if isinstance(f, VideoFrame)]
            keep = {id(f) for f in frames[-deliver:] if f.due is None or f.due >= oldest}
            self.stats.discarded += len(frames) - len(keep)
            out = [f for f in out if not isinstance(f, VideoFrame) or id(f) in keep]
        yield from out

    def _keep_for_replay(self, packet) -> None:
        if packet.is_keyframe:
            self._since_keyframe = [packet]
        elif self._since_keyframe is not None:
            self._since_keyframe.append(packet)
            if len(self._since_keyframe) > MAX_REPLAY:
                self._since_keyframe = None

    def _decode_on_cpu_from_keyframe(self, e: NvdecFailed, packet) -> list:
        """NVDEC's session broke at ``packet`` (None: the final flush): FFmpeg decodes the stream from here on. The
        packets since the last keyframe (``packet`` the last of them) are decoded again on the CPU, and the frames
        NVDEC gave already are not given twice; with no such keyframe, the CPU starts at the next one."""
        import av

        self.codec, self.decoded_on, self.nvdec_broke = self.stream.codec_context, "cpu", True
        self.fallback = f"NVDEC failed mid-stream ({e})"
        self._resume_at = self._next
        replay, self._since_keyframe = self._since_keyframe, []
        if replay is None:
            self._to_keyframe = True
            raise NvdecError(self.fallback)  # this packet: lost, counted as such
        pictures = []
        for p in replay:
            try:
                pictures += self.codec.decode(p)
            except av.FFmpegError:
                if p is packet:
                    raise  # the packet being decoded now: an error of its own, counted as such
        return pictures + (self.codec.decode(None) if packet is None else [])

    def _numbered(self, picture, tb: float, arrivals: dict) -> list[VideoFrame | FrameGap]:
        pts = picture.pts
        if pts is None:
            index, t = self._next, None
        else:
            self._origin = pts if self._origin is None else self._origin
            t = (pts - self._origin) * tb
            index = int(round(t * self.rate))
            if index < self._start:  # before the frame this reading starts at: not wanted, not lost
                return []
            if self._resume_at is not None:  # decoded again on the CPU after NVDEC broke
                if index < self._resume_at:
                    return []
                self._resume_at = None
            if index < self._next - 1:  # out of order, behind frames already given: a damaged stream's leftover
                self.stats.late += 1
                return []
            index = max(self._next, index)  # one behind: timestamp jitter or a variable frame rate
        out: list[VideoFrame | FrameGap] = []
        missing = index - self._next
        # a file's timestamps are exact: any jump is a loss; a live source's jitter by a frame is not; on demand,
        # frames left out on purpose are drops (counted as such), not gaps
        jump = missing > (1 if self.live else 0) and not self._on_demand
        if missing > 0 and (self._errors_since or jump):
            reason = (f"damaged packets ({self.stats.first_error})" if self.stats.errors
                      else "missing from the stream (its timestamps jump)")
            gap = FrameGap(self._next, index - 1, reason)
            self.stats.gaps.append(gap)
            out.append(gap)
        self._errors_since = 0
        self._next = index + 1
        out.append(VideoFrame(index, t, picture, arrivals.get(pts) if pts is not None else None))
        return out

def _reason(e: Exception) -> str:
    text = getattr(e, "strerror", None) or str(e)
    return str(text).split(": '")[0][:200]


def video_frame_count(path: str) -> int | None:
    """Frames the container declares (None when it does not say or cannot be opened)."""
    try:
        with VideoReader(path) as reader:
            return reader.expected_frames
    except Exception:  # noqa: BLE001
        return None


def iter_video_frames(path: str, decoder=None) -> Iterator[tuple[InputRef, object] | ErrorRecord]:
    """Decoded RGB frames of the first video stream, numbered by their timestamps; frames that could not be decoded
    (damage, truncation) come back as ErrorRecords in their place, and the frames after them still come. Frames are
    [h, w, 3] uint8 arrays, or with ``decoder`` (io/nvdec.py's factory) [3, h, w] uint8 tensors on its device."""
    try:
        reader = VideoReader(path, decoder=decoder)
    except NoVideoStream as e:
        yield ErrorRecord(InputRef(path), str(e), "read")
        return
    except Exception as e:  # noqa: BLE001  (PyAV raises many kinds for files it cannot open)
        yield ErrorRecord(InputRef(path), f"cannot open video: {e}", "read")
        return
    delivered = 0
    with reader:
        for item in reader.frames():
            if isinstance(item, FrameGap):
                yield ErrorRecord(InputRef(path, item.first), item.message, "decode")
                continue
            delivered += 1
            yield InputRef(path, item.index, item.time), rgb_picture(item.picture)
    if not delivered and not reader.stats.gaps:
        yield ErrorRecord(InputRef(path), "video has no decodable frames", "decode")


def rgb_picture(picture):
    """A decoded picture as RGB: PyAV's as a [h, w, 3] array, NVDEC's NV12 as a [3, h, w] tensor where it is."""
    if isinstance(picture, NV12Picture):
        from yolotune.ops.color import nv12_to_rgb

        return nv12_to_rgb(picture.planes[None])[0]
    return picture.to_ndarray(format="rgb24")
