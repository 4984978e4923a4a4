"""The decoder pool's shared memory, on the runtime's side: each stream's counters, and which rings still hold
frames (those of a stream that ended are given back once its frames are processed)."""

from __future__ import annotations

import threading
from multiprocessing import shared_memory

import numpy as np

from yolotune.serve.decoder_process import COUNTER_BLOCK, counter_views


class StreamCounters:
    """Two counters per stream in shared memory (decoder_process.counter_views), in blocks of COUNTER_BLOCK
    streams made as streams are added: a decoder process attaches a block once, by name."""

    def __init__(self):
        self.blocks: list[shared_memory.SharedMemory] = []

    def place(self, i: int) -> tuple[str, int]:
        """The block (its name) and offset of stream ``i``'s counters, the block made if need be."""
        b, offset = divmod(i, COUNTER_BLOCK)
        while len(self.blocks) <= b:
            shm = shared_memory.SharedMemory(create=True, size=16 * COUNTER_BLOCK)
            np.ndarray((2, COUNTER_BLOCK), np.int64, buffer=shm.buf)[...] = 0
            self.blocks.append(shm)
        return self.blocks[b].name, offset

    def views(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        b, offset = divmod(i, COUNTER_BLOCK)
        return counter_views(self.blocks[b].buf, offset)

    def close(self) -> None:
        for shm in self.blocks:
            try:
                shm.close()
            except BufferError:  # a view still held by a caller: freed with the process
                pass
            shm.unlink()
        self.blocks.clear()


class RingLedger:
    """Per ring: its stream, its frames delivered and not yet released, whether its stream ended (no frame will
    come into it any more). A ring whose stream ended and whose frames were all released is retired: returned by
    ``released`` or ``ended`` once, as (ring name, stream)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._stream: dict[str, int] = {}
        self._out: dict[str, int] = {}
        self._ended: set[str] = set()

    def delivered(self, name: str, stream: int) -> None:
        with self._lock:
            self._stream[name] = stream
            self._out[name] = self._out.get(name, 0) + 1

    def released(self, name: str) -> list[tuple[str, int]]:
        with self._lock:
            if name not in self._out:
                return []
            self._out[name] -= 1
            return self._retired([name])

    def ended(self, stream: int) -> list[tuple[str, int]]:
        """Stream ``stream``'s source ended: its rings now (a stream added back later gets new ones)."""
        with self._lock:
            mine = [n for n, s in self._stream.items() if s == stream]
            self._ended.update(mine)
            return self._retired(mine)

    def streams(self) -> dict[str, int]:
        with self._lock:
            return dict(self._stream)

    def _retired(self, names: list[str]) -> list[tuple[str, int]]:
        out = []
        for name in names:
            if name in self._ended and self._out.get(name, 0) <= 0:
                out.append((name, self._stream.pop(name)))
                self._out.pop(name, None)
                self._ended.discard(name)
        return out
