"""Read what a JPEG's header says (frame type, channels, EXIF orientation, completeness) without decoding it.

The decoder uses this to send only what nvJPEG handles well (complete baseline 3-channel JPEGs) to the GPU and
everything else (progressive, CMYK, grayscale, truncated, not JPEG) to the CPU path.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


@dataclass(frozen=True)
class JpegHeader:
    sof: int  # 0xC0 baseline, 0xC1 extended, 0xC2 progressive, ...
    height: int
    width: int
    components: int
    orientation: int  # EXIF orientation 1..8 (1 = as stored)
    complete: bool  # an end-of-image marker follows the scan data
    precision: int = 8  # bits per sample
    sampling: tuple[tuple[int, int], ...] = ()  # (horizontal, vertical) sampling factors, one per component

    @property
    def gpu_decodable(self) -> bool:
        return self.sof in (0xC0, 0xC1) and self.components == 3 and self.complete and self.height > 0 and self.width > 0

    @property
    def chroma_subsampling(self) -> str | None:
        """4:4:4, 4:2:2, 4:2:0, 4:4:0 or 4:1:1 for a YCbCr JPEG whose chroma planes are sampled once (None: any
        other layout)."""
        if len(self.sampling) != 3 or self.sampling[1] != (1, 1) or self.sampling[2] != (1, 1):
            return None
        return _SUBSAMPLINGS.get(self.sampling[0])

    @property
    def hardware_decodable(self) -> bool:
        """What the GPUs' hardware JPEG decoders (NVJPG) take: complete baseline 8-bit 3-component JPEGs with one
        of the common chroma subsamplings (io/jpeg_hardware.py)."""
        return (self.sof == 0xC0 and self.precision == 8 and self.gpu_decodable
                and self.chroma_subsampling is not None)


_SUBSAMPLINGS = {(1, 1): "4:4:4", (2, 1): "4:2:2", (2, 2): "4:2:0", (1, 2): "4:4:0", (4, 1): "4:1:1"}


def is_jpeg(data: bytes | bytearray | memoryview) -> bool:
    return len(data) >= 3 and data[0] == 0xFF and data[1] == 0xD8 and data[2] == 0xFF


def read_jpeg_header(data: bytes | bytearray) -> JpegHeader | None:
    """Parse markers up to the first scan; None when this is not a well-formed JPEG header."""
    if not is_jpeg(data):
        return None
    n = len(data)
    pos = 2
    orientation = 1
    sof = None
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        seg = pos + 4
        if length < 2 or seg + length - 2 > n:
            return None
        if marker == 0xE1 and data[seg : seg + 6] == b"Exif\x00\x00":
            orientation = _exif_orientation(bytes(data[seg + 6 : seg + length - 2])) or 1
        elif marker in _SOF_MARKERS and length >= 8:
            height, width = struct.unpack(">HH", data[seg + 1 : seg + 5])
            components = data[seg + 5]
            # each component: id, sampling factors (high nibble horizontal, low vertical), quantisation table
            factors = tuple((data[seg + 7 + 3 * c] >> 4, data[seg + 7 + 3 * c] & 15) for c in range(components)
                            if seg + 8 + 3 * c <= min(n, seg + length - 2))
            sof = (marker, height, width, components, data[seg], factors)
        elif marker == 0xDA:  # start of scan: the header is over
            if sof is None:
                return None
            scan_start = seg + length - 2
            # 0xFFD9 cannot occur inside entropy-coded data (0xFF is stuffed), so finding it means "complete".
            eoi = data.rfind(b"\xff\xd9") if hasattr(data, "rfind") else bytes(data).rfind(b"\xff\xd9")  # no copy
            complete = eoi >= scan_start
            return JpegHeader(sof[0], sof[1], sof[2], sof[3], orientation, complete, sof[4], sof[5])
        pos = seg + length - 2
    return None


def _exif_orientation(tiff: bytes) -> int | None:
    if len(tiff) < 8:
        return None
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        return None
    (ifd,) = struct.unpack(order + "I", tiff[4:8])
    if ifd + 2 > len(tiff):
        return None
    (count,) = struct.unpack(order + "H", tiff[ifd : ifd + 2])
    for i in range(count):
        entry = ifd + 2 + 12 * i
        if entry + 12 > len(tiff):
            return None
        tag, typ = struct.unpack(order + "HH", tiff[entry : entry + 4])
        if tag == 0x0112 and typ == 3:
            (value,) = struct.unpack(order + "H", tiff[entry + 8 : entry + 10])
            return value if 1 <= value <= 8 else None
    return None
