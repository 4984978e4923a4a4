"""Expand what the user named (files, directories, globs, list files, videos) into ordered inputs.

Nothing disappears: a path that does not exist, a glob that matches nothing, or a directory named like an image
becomes an error item in its place; files that a directory holds but that are not media are counted as skipped.
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".mpo"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpeg", ".mpg", ".ts", ".wmv", ".flv", ".gif", ".asf"}
LIST_SUFFIXES = {".txt", ".list"}


@dataclass(frozen=True)
class SourceItem:
    """One input: an image file, a video file, or a named input that is already known to be bad."""

    path: str
    kind: str  # "image" | "video" | "error"
    error: str | None = None


@dataclass
class SourceList:
    items: list[SourceItem] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # non-media files found inside directories

    @property
    def errors(self) -> list[SourceItem]:
        return [i for i in self.items if i.kind == "error"]


def _natural_key(p: Path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def _classify_file(path: Path) -> SourceItem:
    suffix = path.suffix.lower()
    return SourceItem(str(path), "video" if suffix in VIDEO_SUFFIXES else "image")


def _expand_directory(path: Path, out: SourceList) -> None:
    for entry in sorted(path.iterdir(), key=_natural_key):
        suffix = entry.suffix.lower()
        media = suffix in IMAGE_SUFFIXES or suffix in VIDEO_SUFFIXES
        if entry.is_dir():
            if media:
                out.items.append(SourceItem(str(entry), "error", "is a directory, not an image or video file"))
            continue
        if media:
            out.items.append(_classify_file(entry))
        else:
            out.skipped.append(str(entry))


def _expand_one(source: str, out: SourceList, depth: int = 0) -> None:
    path = Path(source)
    if path.is_dir():
        _expand_directory(path, out)
    elif path.is_file():
        if path.suffix.lower() in LIST_SUFFIXES and depth == 0:
            _expand_list_file(path, out, depth)
        else:
            out.items.append(_classify_file(path))
    elif any(ch in source for ch in "*?["):
        matches = sorted(glob.glob(source, recursive=True))
        if not matches:
            out.items.append(SourceItem(source, "error", "glob pattern matched no files"))
        for m in matches:
            mp = Path(m)
            if mp.is_dir():
                if mp.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES:
                    out.items.append(SourceItem(m, "error", "is a directory, not an image or video file"))
                continue
            out.items.append(_classify_file(mp))
    else:
        out.items.append(SourceItem(source, "error", "no such file or directory"))


def _expand_list_file(path: Path, out: SourceList, depth: int) -> None:
    """A .txt/.list file names one source per line (blank lines and # comments ignored)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        out.items.append(SourceItem(str(path), "error", f"cannot read list file: {e}"))
        return
    for line in lines:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        candidate = Path(entry)
        if not candidate.is_absolute() and not candidate.exists() and (path.parent / candidate).exists():
            entry = str(path.parent / candidate)  # relative to the list file
        _expand_one(entry, out, depth + 1)


def expand_sources(sources: Iterable[str | Path]) -> SourceList:
    """Ordered inputs for the given sources."""
    out = SourceList()
    for s in sources:
        _expand_one(str(s), out)
    return out
