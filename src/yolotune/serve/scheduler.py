"""Batches across streams: a deadline policy (max batch, max wait) with round-robin fairness.

A batch leaves as soon as ``max_batch`` frames wait, or when the oldest waiting frame has waited ``max_wait_s``
(so a quiet stream is never held hostage by a full batch that does not come). Frames are taken one per stream in
turn, oldest first within each stream, so a busy stream cannot starve the others and each stream stays in order.
"""

from __future__ import annotations

import threading
import time

from yolotune.serve.queues import Backlog, FrameQueue, StreamFrame


class BatchScheduler:
    def __init__(self, queues: list[FrameQueue], backlog: Backlog, max_batch: int, max_wait_s: float):
        self.queues, self.backlog, self.wake = queues, backlog, backlog.wake
        self.max_batch = max(1, int(max_batch))
        backlog.batch = self.max_batch
        self.max_wait_s = max(0.0, float(max_wait_s))
        self._turn = 0  # the stream served first next time

    def next_batch(self, stop: threading.Event, block: bool = True) -> list[StreamFrame] | None:
        """The next batch; None when every source is done and drained, or ``stop`` is set. With ``block=False``, an
        empty list when no batch is due yet (the caller has other work: collecting the batch in flight)."""
        with self.wake:
            while True:
                if stop.is_set():
                    return None
                waiting = self.backlog.total
                if waiting >= self.max_batch:
                    return self._take()
                if waiting:
                    oldest = min(t for q in self.queues if (t := q.oldest_time()) is not None)
                    left = oldest + self.max_wait_s - time.perf_counter()
                    # nothing more can come: do not wait for a batch that cannot fill
                    if left <= 0 or all(q.closed for q in self.queues):
                        return self._take()
                    if not block:
                        return []
                    self.wake.wait(left)
                    continue
                if all(q.done for q in self.queues):
                    return None
                if not block:
                    return []
                self.wake.wait(0.1)

    def _take(self) -> list[StreamFrame]:
        batch: list[StreamFrame] = []
        n = len(self.queues)
        while len(batch) < self.max_batch:
            took = False
            for k in range(n):
                q = self.queues[(self._turn + k) % n]
                if len(q) and len(batch) < self.max_batch:
                    batch.append(q.pop())
                    took = True
            if not took:
                break
        self._turn = (self._turn + 1) % max(n, 1)
        return batch
