"""Video files through PyAV: frames as RGB arrays, one InputRef per frame, errors as records."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from yolotune.types import ErrorRecord, InputRef


def video_frame_count(path: str) -> int | None:
    """Frames the container declares (None when it does not say or cannot be opened)."""
    import av

    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            return int(stream.frames) or None
    except Exception:
        return None


def iter_video_frames(path: str) -> Iterator[tuple[InputRef, np.ndarray] | ErrorRecord]:
    """Decoded frames of the first video stream; an unreadable file or a decode failure yields an ErrorRecord."""
    import av

    try:
        container = av.open(path)
    except Exception as e:
        yield ErrorRecord(InputRef(path), f"cannot open video: {e}", "read")
        return
    index = 0
    try:
        if not container.streams.video:
            yield ErrorRecord(InputRef(path), "file has no video stream", "read")
            return
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # FFmpeg frame threads; PyAV releases the GIL while decoding
        for frame in container.decode(stream):
            yield InputRef(path, index), frame.to_ndarray(format="rgb24")
            index += 1
        if index == 0:
            yield ErrorRecord(InputRef(path), "video has no decodable frames", "decode")
    except Exception as e:  # corrupt or truncated stream: report where it broke, keep what came before
        yield ErrorRecord(InputRef(path, index), f"video decode failed at frame {index}: {e}", "decode")
    finally:
        container.close()
