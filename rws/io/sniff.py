"""Telling a file's container from its first bytes, not its name.

A torch zip (``torch.save``'s default, whatever the suffix: timm writes ``checkpoint-3.pth.tar``),
a plain pickle (protocol marker ``0x80``, or torch's legacy magic number: ``torch.save`` in the
legacy format), a legacy torch tar, safetensors (an 8-byte little-endian header length, then a
JSON header opening with ``{``), a JSON text, a Git LFS pointer, a few formats that are not
checkpoints, or unknown bytes. The name is left to the caller, as a fallback where the bytes are
ambiguous.
"""

from __future__ import annotations

import os
import struct

from rws.io.safetensors_read import MAX_HEADER

HEAD = 512  # bytes read: the tar magic sits at offset 257

ZIP = "zip"
PICKLE = "pickle"
TAR = "tar"
SAFETENSORS = "safetensors"
JSON = "json"
LFS = "lfs"
EMPTY = "empty"
UNKNOWN = "unknown"
TORCH = (ZIP, PICKLE, TAR)  # what ``torch.load`` reads

#: torch's legacy-format magic number, pickled with protocol 0 or 1 (protocols 2+ open with 0x80)
LEGACY_MAGIC = b"L119547037146038801333356L\n"
OTHER_FORMATS = (  # magic bytes of files sometimes mistaken for checkpoints
    (b"\x1f\x8b", "a gzip archive"),
    (b"BZh", "a bzip2 archive"),
    (b"\xfd7zXZ\x00", "an xz archive"),
    (b"(\xb5/\xfd", "a zstd archive"),
    (b"7z\xbc\xaf'\x1c", "a 7z archive"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (Keras?)"),
    (b"GGUF", "a GGUF model (llama.cpp)"),
)


def read_head(path: str | os.PathLike, size: int = HEAD) -> tuple[bytes, int]:
    """The first ``size`` bytes of a file and its total size (``OSError`` passes through)."""
    with open(path, "rb") as fh:
        return fh.read(size), os.fstat(fh.fileno()).st_size


def sniff(head: bytes, size: int) -> str:
    """The container that a file starting with ``head`` and ``size`` bytes long holds.

    Returns one of ``zip``, ``pickle``, ``tar`` (what ``torch.load`` reads), ``safetensors``,
    ``json``, ``lfs``, ``empty``, or ``unknown`` (see :func:`other_format` for a name).
    """
    if size == 0:
        return EMPTY
    if head.startswith(b"version https://git-lfs"):
        return LFS
    if len(head) >= 9 and head[8:9] == b"{":  # first: a header length may start with 0x80
        (n,) = struct.unpack("<Q", head[:8])
        if 0 < n <= min(size - 8, MAX_HEADER):
            return SAFETENSORS
    if head.startswith(b"PK\x03\x04"):
        return ZIP
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return PICKLE
    if head.startswith(LEGACY_MAGIC):  # torch.save(_use_new_zipfile_serialization=False) with
        return PICKLE  # pickle_protocol 0 or 1
    if head[257:262] == b"ustar":
        return TAR
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
    if text[:1] in (b"{", b"[") and b"\x00" not in head:
        return JSON
    return UNKNOWN


def other_format(head: bytes) -> str | None:
    """What a file that is not a checkpoint looks like (``"a gzip archive"``), if recognised."""
    for magic, what in OTHER_FORMATS:
        if head.startswith(magic):
            return what
    text = head.lstrip(b" \t\r\n")[:15].lower()
    if text.startswith((b"<!doctype html", b"<html")):
        return "an HTML page (a failed download?)"
    return None


def show_head(head: bytes, n: int = 16) -> str:
    """The first ``n`` bytes, as a one-line Python bytes literal."""
    return repr(head[:n]) + ("…" if len(head) > n else "")
