"""What to read and what to call it: ``--source`` arguments and sources files parsed into SourceSpecs, and stream
names that are unique, safe (a folder under --out and a metrics label, never a path out of it) and readable."""

from __future__ import annotations

import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

LIVE_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")


@dataclass
class SourceSpec:
    """What to read. ``kind``: file, url, camera or folder. Live kinds (url, camera), and files played in real time
    unless ``lossless``, behave like cameras: past the pipeline's capacity their frames are dropped (before they are
    decoded, where the codec allows) and counted. Other files and folders block their reader and never drop."""

    uri: str
    kind: str
    name: str
    loop: bool = False  # files: start again at the end
    realtime: bool = False  # files: deliver at the file's frame rate, like a camera (for planning and soak tests)
    named: bool = True  # a name given (NAME=SOURCE, or by code): kept as given; parse_source's defaults may change
    lossless: bool = False  # realtime files: every frame, late if need be (lag grows), instead of dropping
    # the first frame number to deliver: a stream moved to another runtime (scale/) goes on after its last result
    start_frame: int = 0

    @property
    def live(self) -> bool:
        return self.kind in ("url", "camera")

    @property
    def drops(self) -> bool:
        """Camera-like: frames the pipeline cannot take in time are dropped and counted, never queued up."""
        return self.live or (self.realtime and not self.lossless)


# A stream's name is a folder under --out and a Prometheus label: a plain word, never "." or "..", never a path.
STREAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def parse_source(text: str, name: str | None = None, loop: bool = False, realtime: bool = False,
                 lossless: bool = False) -> SourceSpec:
    """A --source argument: a URL (rtsp/rtmp/http/udp/...), /dev/videoN or v4l2:N, a folder to watch, or a file;
    ``NAME=SOURCE`` names the stream. The name is checked, and default names made unique, by ``name_streams``."""
    text = text.strip()
    if name is None:
        name, text = _split_name(text)
    named = name is not None
    if text.lower().startswith(LIVE_SCHEMES):
        spec = SourceSpec(text, "url", "")
    elif text.startswith("v4l2:") or text.startswith("/dev/video"):
        device = text[5:] if text.startswith("v4l2:") else text
        spec = SourceSpec(f"/dev/video{device}" if device.isdigit() else device, "camera", "")
    elif Path(text).is_dir():
        spec = SourceSpec(text, "folder", "")
    else:
        spec = SourceSpec(text, "file", "", loop=loop, realtime=realtime, lossless=lossless)
    spec.name, spec.named = (name, True) if named else (default_name(spec), False)
    return spec


def _split_name(text: str) -> tuple[str | None, str]:
    """``NAME=SOURCE`` -> (NAME, SOURCE); anything else, and a path that exists as typed, is the source alone."""
    head, sep, rest = text.partition("=")
    if not sep or not rest.strip() or "://" in head or Path(text).exists():
        return None, text
    return head.strip(), rest.strip()


def read_source_list(path: str | Path) -> list[str]:
    """Sources from a text file, one per line: ``SOURCE``, ``NAME=SOURCE`` or ``NAME<tab>SOURCE``; blank lines and
    # comments ignored."""
    lines = Path(path).read_text().splitlines()
    out = []
    for line in lines:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        name, tab, source = entry.partition("\t")
        out.append(f"{name.strip()}={source.strip()}" if tab and source.strip() else entry)
    return out


def _clean(text: str) -> str:
    """A name from any text: spaces to '_', anything but letters, digits, '.', '_', '-' to '-', no leading dots."""
    text = re.sub(r"\s+", "_", text.strip())
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", text)
    text = re.sub(r"-{2,}", "-", text).strip("-._")
    return text[:64].rstrip("-._")


def _name_parts(spec: SourceSpec) -> list[str]:
    """What a default name is made of, most specific last: a URL's host, port and path (never its credentials or
    query), a camera's device, a file's folders and stem."""
    if spec.kind == "url":
        u = urllib.parse.urlsplit(spec.uri)
        try:
            port = u.port
        except ValueError:
            port = None
        segments = [p for p in u.path.split("/") if p not in ("", ".", "..")]
        return [p for p in [u.hostname or "", str(port) if port else "", *segments] if p] or [u.scheme]
    path = Path(os.path.abspath(spec.uri))
    if spec.kind == "camera":
        return [path.name]
    parents = [p for p in path.parent.parts if p not in ("/", "")]
    return parents + [path.stem if spec.kind == "file" and path.suffix else path.name]


def default_name(spec: SourceSpec, depth: int = 0) -> str:
    """A readable, safe name: a file's stem (with ``depth`` of its folders before it), a URL's host-port-path."""
    parts = _name_parts(spec)
    keep = parts if spec.kind in ("url", "camera") else parts[-(depth + 1):]
    return _clean("-".join(keep)) or spec.kind


def name_streams(specs: list[SourceSpec], taken: set[str] | None = None) -> list[SourceSpec]:
    """Give every stream a unique, safe name (case-insensitively: file systems may be). Names the user gave are
    checked and kept; default names of files with the same stem take on their folders (a/clip, b/clip ->
    a-clip, b-clip); what still collides gets -2, -3, ... ``taken``: names of streams already running (lower
    case), which the new ones must not repeat."""
    running = set(taken or ())
    taken = set(running)
    for s in specs:
        if not s.named:
            continue
        if not STREAM_NAME.fullmatch(s.name or "") or s.name.strip(".") == "":
            raise ValueError(f"{s.name!r} is not a valid stream name (NAME=SOURCE: a letter or digit, then up to 63 "
                             "letters, digits, '.', '_' or '-'; if this is a file, it does not exist)")
        if s.name.lower() in taken:
            raise ValueError(f"stream name {s.name!r} " + ("is running already" if s.name.lower() in running
                                                             else "given twice"))
        taken.add(s.name.lower())
    defaults = [s for s in specs if not s.named]
    names = {id(s): default_name(s) for s in defaults}
    groups: dict[str, list[SourceSpec]] = {}
    for s in defaults:
        groups.setdefault(names[id(s)].lower(), []).append(s)
    for group in groups.values():
        if len(group) < 2 or any(s.kind in ("url", "camera") for s in group):
            continue
        for depth in (1, 2, 3):  # the fewest folders that tell them apart
            tried = [default_name(s, depth) for s in group]
            if len({t.lower() for t in tried}) == len(tried):
                names.update({id(s): t for s, t in zip(group, tried)})
                break
    for s in defaults:
        name, k = names[id(s)], 1
        while name.lower() in taken:
            k += 1
            name = f"{names[id(s)][:60]}-{k}"
        s.name = name
        taken.add(name.lower())
    return specs


def picture_size(spec: SourceSpec) -> tuple[int, int] | None:
    """(height, width) of a video file's pictures, from its header; None when it cannot be read."""
    try:
        import av

        with av.open(spec.uri) as c:
            s = c.streams.video[0]
            return (s.height, s.width) if s.height and s.width else None
    except Exception:  # noqa: BLE001  (the source worker reports unreadable files)
        return None


def source_fps(spec: SourceSpec) -> float:
    """A video file's frame rate from its header (25 for other sources, or when it cannot be read)."""
    if spec.kind != "file":
        return 25.0
    try:
        import av

        with av.open(spec.uri) as c:
            return float(c.streams.video[0].average_rate or 25)
    except Exception:  # noqa: BLE001  (the source worker reports unreadable files)
        return 25.0
