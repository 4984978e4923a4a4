"""CUDA graph captures kept apart from work in other threads that would invalidate them. Imports no torch: the
decoder processes' modules use it too."""

from __future__ import annotations

import contextlib
import threading


class CaptureGuard:
    """Keeps CUDA graph captures apart from work that would invalidate them even in another thread (NVDEC's
    decoder, mapping another process's memory): any number of such sections at once (``shared``), or one capture
    (``exclusive``), which waits for the sections running to end and holds new ones back until it is done."""

    def __init__(self):
        self._cond = threading.Condition()
        self._shared = 0
        self._capturing = False

    @contextlib.contextmanager
    def shared(self):
        with self._cond:
            while self._capturing:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self):
        with self._cond:
            while self._capturing:
                self._cond.wait()
            self._capturing = True  # no new shared section from here on
            while self._shared:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._capturing = False
                self._cond.notify_all()


# one per process: NVDEC in a thread of the process that captured a graph failed its capture (on an H100)
CAPTURE_GUARD = CaptureGuard()
