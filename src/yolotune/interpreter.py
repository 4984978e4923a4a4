"""The Python interpreter set up for a process whose threads (readers, producer, engine, receivers) share one GIL.

Two settings, undone when the work ends: `yolotune predict` (whose process is ours) applies both; the serve
runtime's run (a library call too) only the first (an application's own freeze is never undone):
- objects alive after start-up (torch, the model: hundreds of thousands) frozen out of the garbage collector's
  sight, so a full collection does not walk them all while holding the GIL and every thread waits;
- a 1 ms thread switch interval instead of 5 ms, so a thread back from a GPU wait or a file read gets the GIL
  sooner (benchmarks/results/e2e_diag_h100.md, "interpreter").
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from typing import Iterator


def usable_cores() -> int:
    """Cores this process may run on (its affinity, e.g. a container's cpuset), not all the machine has."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def freeze_startup_objects() -> bool:
    """gc.collect() then gc.freeze(). Returns whether the caller may unfreeze afterwards: False when objects were
    frozen already (by the application, say), as gc.unfreeze() would undo that freeze too; then what this call
    froze stays frozen. It freezes either way: a run that skipped it had 200 ms full collections
    (benchmarks/results/serve/README.md)."""
    ours = gc.get_freeze_count() == 0
    gc.collect()
    gc.freeze()
    return ours


@contextlib.contextmanager
def startup_objects_frozen() -> Iterator[None]:
    """``freeze_startup_objects`` for the block; unfrozen after it (unless the freeze was not ours)."""
    frozen = freeze_startup_objects()
    try:
        yield
    finally:
        if frozen:
            gc.unfreeze()


@contextlib.contextmanager
def switch_interval(seconds: float | None) -> Iterator[None]:
    """The GIL switch interval for the block (None: left as it is), the previous one restored after it."""
    previous = sys.getswitchinterval()
    if seconds:
        sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


@contextlib.contextmanager
def tuned_for_threads(switch_interval_s: float = 0.001) -> Iterator[None]:
    """Both settings for the block, the previous ones restored after it."""
    with startup_objects_frozen(), switch_interval(switch_interval_s):
        yield
