"""Which decoder takes which JPEG (NVJPG, CUDA nvJPEG, Pillow) and how the split follows measured rates; what
NVJPG is told it takes, read from the header."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from yolotune import Detector
from yolotune.io.decode import ImageDecoder
from yolotune.io.jpeg_header import read_jpeg_header
from yolotune.io.jpeg_routing import FIRST_SHARE, RateSplit, route
from yolotune.options import DetectorOptions


def _jpeg(**save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8)).save(buf, "JPEG", **save)
    return buf.getvalue()


@pytest.mark.parametrize("sub,name", [(0, "4:4:4"), (1, "4:2:2"), (2, "4:2:0")])
def test_baseline_ycbcr_jpegs_go_to_the_hardware(sub, name):
    h = read_jpeg_header(_jpeg(subsampling=sub))
    assert h.chroma_subsampling == name and h.precision == 8 and h.hardware_decodable and h.gpu_decodable


def test_what_the_hardware_does_not_take_is_routed_elsewhere():
    progressive = read_jpeg_header(_jpeg(progressive=True))
    grey = read_jpeg_header(_jpeg_mode("L"))
    cmyk = read_jpeg_header(_jpeg_mode("CMYK"))
    truncated = read_jpeg_header(_jpeg()[:300])
    extended = read_jpeg_header(_jpeg().replace(b"\xff\xc0", b"\xff\xc1", 1))  # SOF1: nvJPEG's, not NVJPG's
    baseline = read_jpeg_header(_jpeg())
    headers = [baseline, progressive, grey, cmyk, truncated, extended, None]
    assert route(headers, hardware=True, cuda=True) == ([0], [5], [1, 2, 3, 4, 6])
    assert route(headers, hardware=False, cuda=True) == ([], [0, 5], [1, 2, 3, 4, 6])
    assert route(headers, hardware=False, cuda=False) == ([], [], list(range(7)))


def _jpeg_mode(mode: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (20, 120, 220)).convert(mode).save(buf, "JPEG")
    return buf.getvalue()


def test_the_split_follows_the_measured_rates():
    split = RateSplit()
    assert split.share == FIRST_SHARE and split.split(list(range(10))) == (list(range(5)), list(range(5, 10)))
    split.measured("hardware", 300, 0.03)  # 10,000/s
    assert split.share == FIRST_SHARE  # until both are timed
    split.measured("cuda", 100, 0.02)  # 5,000/s
    assert split.share == pytest.approx(2 / 3)
    hw, cuda = split.split(list(range(12)))
    assert (len(hw), len(cuda)) == (8, 4)
    split.measured("cuda", 100, 0.01)  # 10,000/s now: the average moves part of the way
    assert 0.5 < split.share < 2 / 3
    split.measured("cuda", 0, 0.0)  # an empty call changes nothing
    assert split.describe()["rates_per_s"]["hardware"] == 10000.0


def test_a_fixed_share_is_kept_and_checked():
    split = RateSplit(1.0)
    split.measured("hardware", 10, 1.0)
    split.measured("cuda", 1000, 1.0)
    assert split.share == 1.0 and split.split([1, 2, 3]) == ([1, 2, 3], [])
    assert RateSplit(0.0).split([1, 2]) == ([], [1, 2])
    with pytest.raises(ValueError, match="from 0 to 1"):
        RateSplit(1.5)


def test_options_and_decoder_check_the_jpeg_choice():
    assert DetectorOptions(jpeg_decode="hardware", hardware_share=0.7).hardware_share == 0.7
    with pytest.raises(ValueError, match="jpeg_decode"):
        DetectorOptions(jpeg_decode="nvjpg")
    with pytest.raises(ValueError, match="hardware_share"):
        DetectorOptions(hardware_share=2)
    with pytest.raises(ValueError, match="jpeg decode must be"):
        ImageDecoder(torch.device("cpu"), jpeg_decode="gpu")
    dec = ImageDecoder(torch.device("cpu"))  # auto on a CPU: Pillow, no complaint
    assert dec.describe() == {"jpeg_decode": "cpu"}
    dec.close()
    with pytest.raises(ValueError, match="cannot decode JPEGs in hardware"):
        ImageDecoder(torch.device("cpu"), jpeg_decode="hardware")
    with pytest.raises(ValueError, match="cannot decode JPEGs in hardware"):
        Detector("default", device="cpu", jpeg_decode="hardware")


class _Refusing:
    """A stand-in GPU decoder on the CPU (torchvision's decoder) that refuses the inputs whose first bytes it is
    told, as NVJPG or nvJPEG refuse what they cannot take."""

    def __init__(self, refuse: set[bytes]):
        self.refuse, self.seen = refuse, []

    def decode(self, datas: list) -> list:
        from torchvision.io import decode_jpeg

        self.seen += [bytes(d[:64]) for d in datas]
        return [None if bytes(d[:64]) in self.refuse else decode_jpeg(torch.frombuffer(d, dtype=torch.uint8))
                for d in datas]


def test_what_one_decoder_refuses_reaches_the_next_and_every_input_comes_back_in_order():
    from yolotune.types import ErrorRecord, InputRef

    jpegs = [bytearray(_jpeg(quality=50 + 5 * k)) for k in range(8)]
    extended = bytearray(bytes(jpegs[0]).replace(b"\xff\xc0", b"\xff\xc1", 1))  # nvJPEG's, not NVJPG's
    items = jpegs + [extended, bytearray(b"not an image"), bytearray(_jpeg(progressive=True))]
    hardware = _Refusing({bytes(jpegs[1][:64]), bytes(jpegs[2][:64])})  # NVJPG refuses two
    cuda = _Refusing({bytes(jpegs[2][:64])})  # nvJPEG refuses one of them too: Pillow's
    dec = ImageDecoder(torch.device("cpu"), hardware_share=0.75)
    dec.hardware, dec.gpu_decode = hardware, True
    dec._decode_on_gpu = cuda.decode
    out = dec.decode([(InputRef(f"in{i}"), d) for i, d in enumerate(items)])
    assert [o.ref.path if hasattr(o, "ref") else o.source.path for o in out] == [f"in{i}" for i in range(11)]
    assert isinstance(out[9], ErrorRecord) and "not a recognised image format" in out[9].reason
    assert all(not isinstance(o, ErrorRecord) and o.tensor.shape == (3, 48, 64) for i, o in enumerate(out) if i != 9)
    # 8 hardware-decodable: 6 to NVJPG (0.75), 2 to nvJPEG beside the extended one; NVJPG's 2 refusals to nvJPEG
    assert len(hardware.seen) == 6 and len(cuda.seen) == 3 + 2
    assert dec.stats["hardware"] == 4 and dec.stats["hardware_refused"] == 2
    assert dec.stats["gpu"] == 4 + 4 and dec.stats["cpu"] == 2 and dec.stats["errors"] == 1
    assert set(dec.split.rates) == {"hardware", "cuda"}
    dec.close()


def test_auto_keeps_cuda_nvjpeg_where_the_hardware_decoders_are_there(monkeypatch):
    """The hardware path ran slower end to end than CUDA nvJPEG alone on an H200
    (benchmarks/results/jpeg/e2e_jpeg_h200_2026-12-06.jsonl): auto must not choose it; asked for, it is used."""
    from yolotune.io import decode

    asked = []

    def hardware_decoder(device, batch):
        asked.append(batch)
        return None, "stand-in: no decoder made"

    monkeypatch.setattr(decode, "_hardware_decoder", hardware_decoder)
    dec = ImageDecoder(torch.device("cuda"))  # no CUDA call is made while constructing
    assert dec.jpeg_decoder == "cuda" and asked == [] and "hardware_unavailable" not in dec.describe()
    dec.close()
    with pytest.raises(ValueError, match="stand-in"):
        ImageDecoder(torch.device("cuda"), jpeg_decode="hardware", batch=32)
    assert asked == [32]


def test_pictures_come_out_planar_whatever_layout_nvimagecodec_returns():
    """P_RGB is asked for, but nvImageCodec versions differ: planar [3, h, w], with a batch axis, or interleaved
    [h, w, 3]. The layout is read once off the 64x64 primer (unambiguous), then every picture comes out [3, h, w]
    with the same pixels, a 3x3 picture too."""
    from yolotune.io.jpeg_hardware import _is_interleaved, _planar

    primer = torch.zeros(3, 64, 64, dtype=torch.uint8)
    assert not _is_interleaved(primer) and not _is_interleaved(primer[None])
    assert _is_interleaved(primer.permute(1, 2, 0)) and _is_interleaved(primer.permute(1, 2, 0)[None])
    with pytest.raises(ValueError, match="layout"):
        _is_interleaved(torch.zeros(64, 64, dtype=torch.uint8))
    for h, w in ((5, 7), (4, 3), (3, 3)):
        chw = torch.arange(3 * h * w, dtype=torch.uint8).reshape(3, h, w)
        assert torch.equal(_planar(chw, False), chw)
        assert torch.equal(_planar(chw[None], False), chw)
        assert torch.equal(_planar(chw.permute(1, 2, 0).contiguous(), True), chw)
        assert torch.equal(_planar(chw.permute(1, 2, 0).contiguous()[None], True), chw)
