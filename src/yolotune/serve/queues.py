"""Bounded per-stream frame queues with an explicit overload policy, and a wake-up signal shared with the scheduler.

"drop_oldest" (live sources): when full, the oldest waiting frame is discarded and counted, so a slow pipeline
serves the newest frames and memory stays bounded. "block" (files): the reader waits for room; nothing is dropped.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass

import numpy as np

POLICIES = ("drop_oldest", "block")


@dataclass
class StreamFrame:
    stream: int
    index: int  # frame number within its stream, from 0
    image: np.ndarray  # [h, w, 3] uint8 RGB, or [h * 3 / 2, w] uint8 I420 planes
    decoded_at: float  # perf_counter when decoding finished: latency is measured from here
    pts: float | None = None  # presentation time in the source, seconds


class FrameQueue:
    """Frames of one stream, oldest first. ``wake`` (shared by all queues) is notified on every put and close."""

    def __init__(self, capacity: int, policy: str, wake: threading.Condition):
        if policy not in POLICIES:
            raise ValueError(f"queue policy must be one of {POLICIES}, not {policy!r}")
        self.capacity = max(1, int(capacity))
        self.policy = policy
        self.wake = wake
        self._frames: collections.deque[StreamFrame] = collections.deque()
        self.dropped = 0
        self.max_depth = 0
        self.closed = False  # the source will put nothing more

    def put(self, frame: StreamFrame, stop: threading.Event | None = None) -> bool:
        """Queue ``frame``; False if ``stop`` was set while waiting for room (block policy)."""
        with self.wake:
            while self.policy == "block" and len(self._frames) >= self.capacity:
                if stop is not None and stop.is_set():
                    return False
                self.wake.wait(0.1)
            if len(self._frames) >= self.capacity:  # drop_oldest
                self._frames.popleft()
                self.dropped += 1
            self._frames.append(frame)
            self.max_depth = max(self.max_depth, len(self._frames))
            self.wake.notify_all()
        return True

    def close(self) -> None:
        with self.wake:
            self.closed = True
            self.wake.notify_all()

    # The scheduler calls these while holding ``wake`` (a Condition over an RLock).
    def __len__(self) -> int:
        return len(self._frames)

    def oldest_time(self) -> float | None:
        return self._frames[0].decoded_at if self._frames else None

    def pop(self) -> StreamFrame:
        with self.wake:  # re-entrant: the scheduler already holds it
            frame = self._frames.popleft()
            self.wake.notify_all()  # a blocked reader may have room now
            return frame

    @property
    def done(self) -> bool:
        return self.closed and not self._frames
