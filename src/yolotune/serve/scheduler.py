"""Batches across streams: a deadline policy (max batch, max wait), oldest frames first.

A batch leaves as soon as ``max_batch`` frames wait, or when the oldest waiting frame has waited ``max_wait_s``
(so a quiet stream is never held hostage by a full batch that does not come). It takes the oldest waiting frames
of all streams (earliest decode first; each stream's queue is in order, so each stream stays in order), and among
frames of the same age one per stream in turn. No frame waits behind a newer one, so no stream starves.

Oldest first, not one frame per stream in turn from a moving pointer, which let frames at the back of the turn wait
hundreds of milliseconds while batches left every few (benchmarks/results/serve/serve_stalls_h100_turns_only.json).
"""

from __future__ import annotations

import heapq
import threading
import time

from yolotune.io.streams import StreamFrame
from yolotune.serve.queues import Backlog, FrameQueue


class BatchScheduler:
    def __init__(self, queues: list[FrameQueue], backlog: Backlog, max_batch: int, max_wait_s: float,
                 until_stopped: bool = False):
        self.queues, self.backlog, self.wake = queues, backlog, backlog.wake
        self.until_stopped = until_stopped  # streams may still be added: every source done is not the end
        self.max_batch = max(1, int(max_batch))
        backlog.batch = self.max_batch
        self.max_wait_s = max(0.0, float(max_wait_s))
        self._turn = 0  # the stream served first next time

    def next_batch(self, stop: threading.Event, block: bool = True) -> list[StreamFrame] | None:
        """The next batch; None when every source is done and drained (unless ``until_stopped``), or ``stop`` is set.
        With ``block=False``, an
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
                if not self.until_stopped and all(q.done for q in self.queues):
                    return None
                if not block:
                    return []
                self.wake.wait(0.1)

    def _take(self) -> list[StreamFrame]:
        n = len(self.queues)
        # (decode time of the queue's oldest frame, frames taken from it in this batch, place in the turn, queue)
        heads = [(t, 0, (i - self._turn) % n, i) for i, q in enumerate(self.queues) if (t := q.oldest_time()) is not None]
        heapq.heapify(heads)
        batch: list[StreamFrame] = []
        while heads and len(batch) < self.max_batch:
            _, taken, place, i = heapq.heappop(heads)
            q = self.queues[i]
            batch.append(q.pop())
            if (t := q.oldest_time()) is not None:
                heapq.heappush(heads, (t, taken + 1, place, i))
        self._turn = (self._turn + 1) % max(n, 1)
        return batch
