"""Expand what the user named (files, directories, globs, list files, videos) into ordered inputs.

Nothing disappears: a path that does not exist, a glob that matches nothing, or a directory named like an image
becomes an error item in its place; files that a directory holds but that are not media are counted as skipped.
"""

from __future__ import annotations

import fnmatch
import glob
import os
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
    subfolders: list[str] = field(default_factory=list)  # folders inside named directories, not searched

    @property
    def errors(self) -> list[SourceItem]:
        return [i for i in self.items if i.kind == "error"]


def _natural_key(p: Path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def _classify_file(path: Path) -> SourceItem:
    suffix = path.suffix.lower()
    return SourceItem(str(path), "video" if suffix in VIDEO_SUFFIXES else "image")


def _real(path: Path) -> str:
    return os.path.realpath(path)


def _missing_reason(path: Path) -> str:
    """Why a named path cannot be read: absent, a symlink to nothing, or a symlink loop."""
    if not path.is_symlink():
        return "no such file or directory"
    try:
        path.stat()
    except OSError as e:
        if e.errno == 40:  # ELOOP
            return "symbolic link loop (it points back to itself)"
    return f"broken symbolic link (points to {os.readlink(path)}, which does not exist)"


def _expand_directory(path: Path, out: SourceList, recursive: bool = False, walked: set | None = None) -> None:
    """The media files of ``path`` in natural order; with ``recursive``, then those of each subfolder (each real
    folder once, so symlink loops end)."""
    seen: set[str] = set()  # each real file once, however many names point to it
    walked = set() if walked is None else walked
    walked.add(_real(path))
    subdirs = []
    for entry in sorted(path.iterdir(), key=_natural_key):
        suffix = entry.suffix.lower()
        media = suffix in IMAGE_SUFFIXES or suffix in VIDEO_SUFFIXES
        if entry.is_dir():
            if media:
                out.items.append(SourceItem(str(entry), "error", "is a directory, not an image or video file"))
            elif recursive:
                subdirs.append(entry)
            elif not recursive:
                out.subfolders.append(str(entry))
            continue
        if media:
            if not entry.exists():
                out.items.append(SourceItem(str(entry), "error", _missing_reason(entry)))
            elif _real(entry) not in seen:
                seen.add(_real(entry))
                out.items.append(_classify_file(entry))
        else:
            out.skipped.append(str(entry))
    for sub in subdirs:
        if _real(sub) not in walked:
            _expand_directory(sub, out, recursive, walked)


def _expand_one(source: str, out: SourceList, depth: int = 0, recursive: bool = False) -> None:
    path = Path(source)
    if path.is_dir():
        _expand_directory(path, out, recursive)
    elif path.is_file():
        if path.suffix.lower() in LIST_SUFFIXES and depth == 0:
            _expand_list_file(path, out, depth)
        else:
            out.items.append(_classify_file(path))
    elif any(ch in source for ch in "*?["):
        matches = sorted(_glob(source))
        if not matches:
            out.items.append(SourceItem(source, "error", "glob pattern matched no files"))
        seen: set[str] = set()
        for m in matches:
            mp = Path(m)
            if mp.is_dir():
                if mp.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES:
                    out.items.append(SourceItem(m, "error", "is a directory, not an image or video file"))
                continue
            if _real(mp) not in seen:
                seen.add(_real(mp))
                out.items.append(_classify_file(mp))
    else:
        out.items.append(SourceItem(source, "error", _missing_reason(path)))


def _glob(pattern: str) -> list[str]:
    """Paths matching ``pattern``. ``**`` walks directories following symlinks, but each real directory once:
    glob.glob would follow a symlink loop 40 levels deep (and two loops 2^40 ways)."""
    if "**" not in pattern:
        return glob.glob(pattern)
    parts = Path(pattern).parts
    fixed = next(i for i, p in enumerate(parts) if any(ch in p for ch in "*?["))
    root = Path(*parts[:fixed]) if fixed else Path(".")
    rest = parts[fixed:]
    found: list[str] = []
    visited: set[tuple[int, int]] = set()
    for top, dirs, files in os.walk(root, followlinks=True):
        try:
            st = os.stat(top)
        except OSError:
            dirs[:] = []
            continue
        if (st.st_dev, st.st_ino) in visited:  # reached again through a link: already walked
            dirs[:] = []
            continue
        visited.add((st.st_dev, st.st_ino))
        rel_top = os.path.relpath(top, root)
        for name in dirs + files:
            rel = name if rel_top == "." else os.path.join(rel_top, name)
            if _matches(rest, Path(rel).parts):
                found.append(os.path.join(str(root), rel) if fixed else rel)
    return found


def _matches(pattern: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    """glob's rules on path parts: ``**`` spans any number of directories (none included), the others match one
    name each (fnmatch); hidden names match only a pattern that starts with a dot."""
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_matches(rest, parts[i:]) for i in range(len(parts) + 1))
    if not parts or (parts[0].startswith(".") and not head.startswith(".")):
        return False
    return fnmatch.fnmatchcase(parts[0], head) and _matches(rest, parts[1:])


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


def expand_sources(sources: Iterable[str | Path], recursive: bool = False) -> SourceList:
    """Ordered inputs for the given sources; ``recursive``: directories' subfolders too."""
    out = SourceList()
    for s in sources:
        _expand_one(str(s), out, recursive=recursive)
    return out
