"""CUDA graph captures kept apart from NVDEC's work in other threads: a capture waits for the decodes under way and
holds new ones back until it is done; decodes never wait for one another."""

import threading
import time

from yolotune.capture_guard import CaptureGuard


def test_a_capture_waits_for_running_sections_and_holds_new_ones_back():
    guard, log = CaptureGuard(), []
    in_section, release = threading.Event(), threading.Event()

    def decode(name, hold=None):
        with guard.shared():
            log.append(f"{name} in")
            if hold is not None:
                in_section.set()
                hold.wait(5)
            log.append(f"{name} out")

    def capture():
        with guard.exclusive():
            log.append("capture in")
            time.sleep(0.05)
            log.append("capture out")

    first = threading.Thread(target=decode, args=("a", release))
    first.start()
    in_section.wait(5)
    cap = threading.Thread(target=capture)
    cap.start()
    time.sleep(0.05)
    later = threading.Thread(target=decode, args=("b",))
    later.start()
    time.sleep(0.05)
    assert log == ["a in"]  # the capture waits for a; b waits for the capture
    release.set()
    for t in (first, cap, later):
        t.join(5)
    assert log == ["a in", "a out", "capture in", "capture out", "b in", "b out"]


def test_sections_run_together():
    guard, inside, peak = CaptureGuard(), [0], [0]
    lock = threading.Lock()

    def decode():
        with guard.shared():
            with lock:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            time.sleep(0.05)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=decode) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert peak[0] == 4
