"""Bounded per-stream frame queues with an explicit overload policy, and a wake-up signal shared with the scheduler.

"drop_oldest" (camera-like sources): when full, the oldest waiting frame is discarded and counted, so a slow pipeline
serves the newest frames and memory stays bounded; their readers consult ``Admission`` first, so past capacity they
hold packets back undecoded rather than decode frames for this queue to drop. "block" (files): the reader waits
for room; nothing is dropped.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

POLICIES = ("drop_oldest", "block")


@dataclass
class StreamFrame:
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


class Backlog:
    """What all streams' queues hold together, under one lock. The scheduler waits on ``wake`` and is woken only when
    it has something to decide: the first frame arrives (its deadline starts), a full batch is waiting, or a source
    closes. Readers blocked on a full queue wait on their own queue's condition over the same lock, so a pop wakes
    that one reader. Measured with 100 streams on 2 cores (tiny frames, no model): waking every waiter on every put
    and pop held the runtime to 2,080 frames/s."""

    def __init__(self):
        self.lock = threading.RLock()
        self.wake = threading.Condition(self.lock)
        self.total = 0  # frames waiting in all queues
        self.batch = 1  # frames that make a batch (set by the scheduler)


class FrameQueue:
    """Frames of one stream, oldest first."""

    def __init__(self, capacity: int, policy: str, backlog: Backlog):
        if policy not in POLICIES:
            raise ValueError(f"queue policy must be one of {POLICIES}, not {policy!r}")
        self.capacity = max(1, int(capacity))
        self.policy = policy
        self.backlog = backlog
        self.room = threading.Condition(backlog.lock)
        self._frames: collections.deque[StreamFrame] = collections.deque()
        self.dropped = 0
        self.max_depth = 0
        self.closed = False  # the source will put nothing more
        self.left = 0  # frames that left: taken into a batch or dropped (a decoder process reads it: room to decode)
        self.left_counter = None  # a one-element view into memory shared with that process, kept equal to left
        self._limit = self.capacity  # Admission's limit: beyond it, waiting frames are stale and dropped at a pop
        self.limit_view = None  # the same, set by a decoder process in shared memory

    def outstanding(self) -> int:
        """Frames delivered and not yet taken or dropped."""
        return len(self._frames)

    def set_limit(self, n: int) -> None:
        self._limit = max(1, int(n))

    @property
    def limit(self) -> int:
        return max(1, int(self.limit_view[0])) if self.limit_view is not None else self._limit

    def _left(self, n: int = 1) -> None:
        self.left += n
        if self.left_counter is not None:
            self.left_counter[0] = self.left

    def put(self, frame: StreamFrame, stop: threading.Event | None = None) -> bool:
        """Queue ``frame``; False if ``stop`` was set while waiting for room (block policy)."""
        b = self.backlog
        dropped = None
        frame.queued_at = time.perf_counter()
        with b.lock:
            while self.policy == "block" and len(self._frames) >= self.capacity:
                if stop is not None and stop.is_set():
                    return False
                self.room.wait(0.1)
            if len(self._frames) >= self.capacity:  # drop_oldest: the total does not change
                dropped = self._frames.popleft()
                self.dropped += 1
                self._left()
            else:
                b.total += 1
                if b.total == 1 or b.total >= b.batch:
                    b.wake.notify()
            self._frames.append(frame)
            self.max_depth = max(self.max_depth, len(self._frames))
        if dropped is not None and dropped.on_drop is not None:
            dropped.on_drop([dropped])
        return True

    def close(self) -> None:
        with self.backlog.lock:
            self.closed = True
            self.backlog.wake.notify_all()
            self.room.notify_all()

    # The scheduler calls these while holding the backlog's lock.
    def __len__(self) -> int:
        return len(self._frames)

    def oldest_time(self) -> float | None:
        return self._frames[0].decoded_at if self._frames else None

    def pop(self) -> StreamFrame:
        stale = []
        with self.backlog.lock:  # re-entrant: the scheduler already holds it
            while self.policy == "drop_oldest" and len(self._frames) > self.limit:  # its source is far behind
                stale.append(self._frames.popleft())
                self.dropped += 1
                self.backlog.total -= 1
                self._left()
            frame = self._frames.popleft()
            frame.batched_at = time.perf_counter()
            self.backlog.total -= 1
            self._left()
            self.room.notify()  # this queue's reader, if it waits for room
        for f in stale:
            if f.on_drop is not None:
                f.on_drop([f])
        return frame

    @property
    def done(self) -> bool:
        return self.closed and not self._frames


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
