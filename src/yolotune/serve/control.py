"""Streams added and removed while ``run`` goes on: a watched sources file, and a small HTTP endpoint.

Both drive anything with ``add_stream(spec) -> name``, ``remove_stream(name)`` and ``stream_list()``: the stream
runtime, or the Ray controller (scale/). The endpoint listens on 127.0.0.1 unless asked otherwise:

    GET    /streams          the streams, as JSON
    POST   /streams          {"source": "rtsp://...", "name": "door"} (name optional): 201 {"name": ...}
    DELETE /streams/NAME     204; 404 when no such stream runs
"""

from __future__ import annotations

import contextlib
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Protocol

from yolotune.io.stream_specs import SourceSpec, read_source_list


class StreamControl(Protocol):
    def add_stream(self, spec: SourceSpec) -> str: ...

    def remove_stream(self, name: str) -> None: ...

    def stream_list(self) -> list[dict]: ...


class SourcesFileWatcher(threading.Thread):
    """Reads a sources file again whenever it changes: a line added starts its stream, a line taken out stops the
    stream it started (a line changed is both). ``started``: the lines already running, with their stream names."""

    def __init__(self, path: Path, control: StreamControl, parse: Callable[..., SourceSpec],
                 started: dict[str, str], on_message: Callable[[str], None] = lambda _m: None,
                 interval_s: float = 1.0):
        super().__init__(name="yolotune-sources-file", daemon=True)
        self.path, self.control, self.parse = Path(path), control, parse
        self.running = dict(started)  # line -> stream name
        self.say = on_message
        self.interval_s = interval_s
        self.stopped = threading.Event()
        self._seen = self._stamp()

    def _stamp(self):
        try:
            st = self.path.stat()
            return st.st_mtime_ns, st.st_size
        except OSError:
            return None

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            stamp = self._stamp()
            if stamp is None or stamp == self._seen:
                continue
            self._seen = stamp
            try:
                lines = read_source_list(self.path)
            except (OSError, UnicodeDecodeError) as e:
                self.say(f"cannot read {self.path}: {e}; the streams run on as they were")
                continue
            self.apply(lines)

    def apply(self, lines: list[str]) -> None:
        """Make the running streams those of ``lines``."""
        wanted = list(dict.fromkeys(lines))
        for line in [t for t in self.running if t not in wanted]:
            name = self.running.pop(line)
            with contextlib.suppress(KeyError):  # it ended meanwhile
                self.control.remove_stream(name)
                self.say(f"stream {name} removed ({self.path.name} no longer lists it)")
        for line in [t for t in wanted if t not in self.running]:
            try:
                name = self.control.add_stream(self.parse(line))
            except (ValueError, OSError) as e:
                self.say(f"{self.path.name}: cannot add {line!r}: {e}")
                continue
            self.running[line] = name
            self.say(f"stream {name} added ({line})")

    def stop(self) -> None:
        self.stopped.set()


class ControlServer:
    """The HTTP endpoint above, in a thread of its own, on ``host``:``port`` (0: a free port, see ``port``)."""

    def __init__(self, control: StreamControl, parse: Callable[..., SourceSpec], port: int,
                 host: str = "127.0.0.1", on_message: Callable[[str], None] = lambda _m: None):
        handler = type("Handler", (_Handler,), {"control": control, "parse": staticmethod(parse),
                                                "say": staticmethod(on_message)})
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="yolotune-control", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    control: StreamControl
    parse: Callable[..., SourceSpec]  # (text, name=None): parse_source with the run's options
    say: Callable[[str], None]

    def log_message(self, *args) -> None:  # requests are not news on stderr
        pass

    def _reply(self, code: int, body=None) -> None:
        data = b"" if body is None else (json.dumps(body, default=str) + "\n").encode()
        self.send_response(code)
        if data:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _path(self) -> list[str]:
        return [urllib.parse.unquote(p) for p in urllib.parse.urlsplit(self.path).path.split("/") if p]

    def do_GET(self) -> None:
        if self._path() != ["streams"]:
            return self._reply(404, {"error": "not found: GET /streams"})
        self._reply(200, self.control.stream_list())

    def do_POST(self) -> None:
        if self._path() != ["streams"]:
            return self._reply(404, {"error": "not found: POST /streams"})
        try:
            length = min(int(self.headers.get("Content-Length") or 0), 65536)
            body = json.loads(self.rfile.read(length) or b"{}")
            source = str(body["source"]).strip()
            if not source:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return self._reply(400, {"error": 'send JSON: {"source": "rtsp://...", "name": "optional"}'})
        name = body.get("name")
        try:
            added = self.control.add_stream(self.parse(source, str(name) if name else None))
        except (ValueError, OSError) as e:
            return self._reply(400, {"error": str(e)})
        self.say(f"stream {added} added ({source})")
        self._reply(201, {"name": added})

    def do_DELETE(self) -> None:
        path = self._path()
        if len(path) != 2 or path[0] != "streams":
            return self._reply(404, {"error": "not found: DELETE /streams/NAME"})
        try:
            self.control.remove_stream(path[1])
        except KeyError as e:
            return self._reply(404, {"error": str(e.args[0] if e.args else e)})
        self.say(f"stream {path[1]} removed")
        self._reply(204)
