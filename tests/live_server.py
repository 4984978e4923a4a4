"""Live MPEG-TS streams over HTTP on 127.0.0.1, like cameras: each client of ``http://127.0.0.1:PORT/`` gets the
clip remuxed by PyAV (no re-encoding) as MPEG-TS, paced at its frame rate, looped for as long as it stays. One port
per stream. Used by the tests and benchmarks/live_overload.py.

    python tests/live_server.py CLIP PORT [PORT ...]      (runs until killed or its parent ends)
    python tests/live_server.py --drain PORT [PORT ...]   (reads the streams and throws them away)
"""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import time
from pathlib import Path


class _Camera(http.server.BaseHTTPRequestHandler):
    """GET any path: the clip as an endless MPEG-TS stream from now on, at its frame rate."""

    clip = ""

    def do_GET(self):  # noqa: N802  (http.server's name)
        self.send_response(200)
        self.send_header("Content-Type", "video/mp2t")
        self.end_headers()
        try:
            _stream(self.clip, self.wfile)
        except (BrokenPipeError, ConnectionResetError, OSError, ValueError):
            pass  # the client went away

    def log_message(self, *args):
        pass


def _stream(clip: str, sink) -> None:
    """Remux ``clip`` into ``sink`` (a file object) as MPEG-TS, each packet at its time, looped, timestamps running on."""
    import av

    start, base = time.perf_counter(), 0  # base: where this pass's timestamps start, in the stream's time base
    with av.open(sink, "w", format="mpegts") as out:
        stream = None
        while True:
            with av.open(clip) as src:
                vin = src.streams.video[0]
                stream = stream or out.add_stream_from_template(vin)
                tb = vin.time_base
                frame_ticks = max(1, round(1 / (float(vin.average_rate or 30) * float(tb))))
                first, end = None, base
                for packet in src.demux(vin):
                    if packet.dts is None or packet.pts is None:
                        continue
                    first = packet.dts if first is None else first
                    packet.dts, packet.pts = base + packet.dts - first, base + packet.pts - first
                    end = max(end, packet.pts + frame_ticks)
                    wait = start + float(packet.dts * tb) - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
                    packet.stream = stream
                    out.mux(packet)
                base = end


def serve(clip: str, port: int) -> http.server.ThreadingHTTPServer:
    """A server for ``clip`` on 127.0.0.1:``port``, one real-time stream per client, in a thread of its own."""
    handler = type("Camera", (_Camera,), {"clip": str(clip)})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def start(clip: str | Path, ports: list[int], nice: int = 0) -> subprocess.Popen:
    """This script in a process of its own, serving ``clip`` on each port; terminate() stops it. ``nice``: its
    niceness, so that, standing in for cameras elsewhere, it takes only the CPU time nobody else wants."""
    import os

    return subprocess.Popen([sys.executable, __file__, str(clip), *map(str, ports)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=(lambda: os.nice(nice)) if nice else None)


def _drain(port: int) -> None:
    """Read one stream and throw it away: the servers' load without a pipeline (the benchmark's control)."""
    import http.client

    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/cam")
            response = conn.getresponse()
            while response.read(1 << 16):
                pass
        except OSError:
            time.sleep(0.5)


def drain(ports: list[int]) -> subprocess.Popen:
    """A process reading every stream and discarding it; terminate() stops it."""
    return subprocess.Popen([sys.executable, __file__, "--drain", *map(str, ports)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


if __name__ == "__main__":
    import os

    clip_path, *port_args = sys.argv[1:]
    parent = os.getppid()
    if clip_path == "--drain":
        for p in port_args:
            threading.Thread(target=_drain, args=(int(p),), daemon=True).start()
    else:
        servers = [serve(clip_path, int(p)) for p in port_args]
    try:
        while os.getppid() == parent:  # the test or benchmark that started it is gone: so is it
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
