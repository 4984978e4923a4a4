"""The producer thread: reads, decodes and letterboxes batch i+1 (on its own CUDA stream) while batch i computes.

Bounded on both sides: one prepared batch waits in the queue, and a batch needs a free slot before its pixels
are written, so memory does not grow with the input. File reads for the next chunk run ahead of decoding.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import torch

from yolotune.io.sources import SourceList
from yolotune.io.video import iter_video_frames
from yolotune.pipeline.buffers import Batch, Slot
from yolotune.pipeline.stages import BatchStages
from yolotune.types import ErrorRecord, InputRef

_END = object()


@dataclass
class _Failure:
    error: BaseException


class BatchProducer:
    """Iterate to get prepared batches in input order; ``release`` a slot once its results are read; ``close``."""

    def __init__(self, stages: BatchStages, sources: SourceList, slots: list[Slot]):
        self.stages = stages
        self.sources = sources
        self.free_slots: queue.Queue[Slot] = queue.Queue()
        for s in slots:
            self.free_slots.put(s)
        self.batches: queue.Queue = queue.Queue(maxsize=1)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="yolotune-producer", daemon=True)
        self.thread.start()

    def __iter__(self) -> Iterator[Batch]:
        while True:
            item = self.batches.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item

    def release(self, slot: Slot) -> None:
        self.free_slots.put(slot)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)

    # ------------------------------------------------------------------------------ producer thread
    def _put(self, obj) -> bool:
        while not self.stop.is_set():
            try:
                self.batches.put(obj, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        det = self.stages
        stream_ctx = torch.cuda.stream(det.decode_stream) if det.decode_stream is not None else contextlib.nullcontext()
        reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="yolotune-read")
        try:
            with torch.inference_mode(), stream_ctx:
                ahead: deque[Future] = deque()  # reading chunk i+1 overlaps decoding chunk i
                for chunk in self._chunks():
                    ahead.append(reader.submit(det.decoder.load, chunk))
                    if len(ahead) > 1 and not self._put(self._prepare(ahead.popleft().result())):
                        return
                while ahead:
                    if not self._put(self._prepare(ahead.popleft().result())):
                        return
        except BaseException as e:  # surface programmer errors in the consumer thread
            self._put(_Failure(e))
            return
        finally:
            reader.shutdown(wait=False, cancel_futures=True)
        self._put(_END)

    def _items(self):
        for item in self.sources.items:
            if item.kind == "error":
                ref = InputRef(item.path)
                yield ref, ErrorRecord(ref, item.error or "bad input", "read")
            elif item.kind == "video":
                for frame in iter_video_frames(item.path, self.stages.video_decoder):
                    yield (frame.source, frame) if isinstance(frame, ErrorRecord) else frame
            else:
                yield InputRef(item.path), None

    def _chunks(self):
        """Lists of inputs holding ``batch`` decodable items each (error items ride along in their place)."""
        chunk: list = []
        decodable = 0
        for ref, payload in self._items():
            chunk.append((ref, payload))
            decodable += not isinstance(payload, ErrorRecord)
            if decodable >= self.stages.batch:
                yield chunk
                chunk, decodable = [], 0
        if chunk:
            yield chunk

    def _acquire_slot(self) -> Slot | None:
        while not self.stop.is_set():
            try:
                return self.free_slots.get(timeout=0.1)
            except queue.Empty:
                continue
        return None

    def _prepare(self, loaded: list) -> Batch:
        det = self.stages
        with det.timer("decode"):
            batch = det.decode(loaded)
        if not batch.images:
            return batch
        slot = self._acquire_slot()
        if slot is None:
            return batch
        batch.slot, batch.bucket = slot, det.bucket(len(batch.images))
        with det.timer("preprocess"):
            det.letterbox_into(slot, batch.images, batch.bucket)
            if slot.ready is not None:
                slot.ready.record(det.decode_stream)
        return batch
