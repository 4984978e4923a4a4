"""Bounded per-stream frame queues with an explicit overload policy, and a wake-up signal shared with the scheduler.

"drop_oldest" (camera-like sources): when full, the oldest waiting frame is discarded and counted, so a slow pipeline
serves the newest frames and memory stays bounded; their readers consult ``Admission`` (io/streams.py) first, so past capacity they
hold packets back undecoded rather than decode frames for this queue to drop. "block" (files): the reader waits
for room; nothing is dropped.
"""

from __future__ import annotations

import collections
import threading
import time
from yolotune.io.streams import StreamFrame

POLICIES = ("drop_oldest", "block")


class Backlog:
    """What all streams' queues hold together, under one lock. The scheduler waits on ``wake`` and is woken only when
    it has something to decide: the first frame arrives (its deadline starts), a full batch is waiting, or a source
    closes. Readers blocked on a full queue wait on their own queue's condition over the same lock, so a pop wakes
    that one reader: waking every waiter on every put and pop held the runtime back
    (benchmarks/results/serve/README.md, the wake-up change)."""

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
