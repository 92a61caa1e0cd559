"""Pillow JPEG round trips of many images, encoded as one canvas and decoded one by one.

Per image, Pillow's JPEG path is mostly fixed cost (encoder and decoder set-up, headers), so the
images are stacked into one tall canvas and encoded once, with a restart marker after every image.
A baseline JPEG codes each 8×8 block (16×16 MCU with 4:2:0) on its own, with the same tables; a
restart resets the DC predictors as a new image does; when the image height is a multiple of the
MCU height, no MCU and no chroma subsampling pair spans two images. So the data between two
markers is, byte for byte, the scan of that image encoded alone, and the canvas header with the
height set to one image's turns it into that image's JPEG file. Decoding stays per image: the
decoder's chroma upsampling would blend neighbours across a shared canvas.
"""

from __future__ import annotations

import io
import re
import struct

import numpy as np
from PIL import Image

_MCU = 16  # MCU side with Pillow's default 4:2:0 chroma subsampling
_MAX_SIDE = 65500  # libjpeg's largest dimension
_RST = re.compile(rb"\xff[\xd0-\xd7]")  # restart markers; 0xFF in entropy data is stuffed as FF 00
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def round_trip(images: np.ndarray, quality: int) -> np.ndarray:
    """Pillow ``save(format="JPEG", quality=quality)`` then decode, for ``(N, H, W, 3)`` uint8."""
    n, h = images.shape[:2]
    out = np.empty_like(images)
    per = max(1, _MAX_SIDE // h)
    for start in range(0, n, per):
        part = images[start : start + per]
        decoded = _canvas_round_trip(part, quality) if h % _MCU == 0 else None
        if decoded is None:  # other heights (or a Pillow without restart markers): one by one
            decoded = np.stack([_single_round_trip(img, quality) for img in part])
        out[start : start + len(part)] = decoded
    return out


def _single_round_trip(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as decoded:
        return np.asarray(decoded.convert("RGB"))


def split_canvas(data: bytes, count: int, height: int) -> list[bytes] | None:
    """The per-image JPEG files inside a canvas JPEG with ``count`` restart intervals, or None.

    Each is the canvas header (SOF height set to ``height``), one interval's data and EOI.
    """
    pos, header = 2, bytearray(data)
    while True:  # header segments up to and including SOS
        if pos + 4 > len(data) or data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        end = pos + 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        if marker in _SOF:
            header[pos + 5 : pos + 7] = struct.pack(">H", height)
        pos = end
        if marker == 0xDA:
            break
    if not data.endswith(b"\xff\xd9"):
        return None
    scans = _RST.split(data[pos:-2])
    if len(scans) != count:
        return None
    head = bytes(header[:pos])
    return [head + scan + b"\xff\xd9" for scan in scans]


def _canvas_round_trip(images: np.ndarray, quality: int) -> np.ndarray | None:
    n, h, w, _ = images.shape
    buf = io.BytesIO()
    canvas = Image.fromarray(np.ascontiguousarray(images).reshape(n * h, w, 3))
    canvas.save(buf, format="JPEG", quality=quality, restart_marker_rows=h // _MCU)
    files = split_canvas(buf.getvalue(), n, h)
    if files is None:
        return None
    decoded = b"".join(
        Image.frombytes("RGB", (w, h), f, "jpeg", "RGB", "").tobytes() for f in files
    )
    return np.frombuffer(decoded, dtype=np.uint8).reshape(images.shape)
