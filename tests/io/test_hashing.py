"""rws.io.hashing: the one home for sha256 fingerprints, checked against known digests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from rws.io.hashing import (
    file_sha256,
    files_sha256,
    json_sha256,
    state_sha256,
    tensor_sha256,
    text_sha256,
)

EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
ABC = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_text_sha256_known_digests() -> None:
    assert text_sha256("") == EMPTY
    assert text_sha256("abc") == ABC
    assert text_sha256("é") == hashlib.sha256("é".encode()).hexdigest()  # UTF-8


def test_json_sha256_sorts_keys_and_stringifies() -> None:
    assert json_sha256({"b": 1, "a": [1, 2]}) == json_sha256({"a": [1, 2], "b": 1})
    assert json_sha256({"b": 1, "a": [1, 2]}) == text_sha256('{"a": [1, 2], "b": 1}')
    assert json_sha256({"p": Path("x")}) == text_sha256('{"p": "x"}')  # non-JSON values by str
    assert json_sha256((3, 5)) == json_sha256([3, 5])


def test_tensor_sha256_hashes_little_endian_bytes() -> None:
    t = torch.tensor([1.0, 2.0], dtype=torch.float32)
    raw = b"\x00\x00\x80\x3f\x00\x00\x00\x40"  # 1.0 and 2.0, float32 little-endian
    assert tensor_sha256(t) == hashlib.sha256(raw).hexdigest()
    assert (
        tensor_sha256(torch.tensor([1, 2], dtype=torch.int8)) == hashlib.sha256(b"\1\2").hexdigest()
    )
    assert tensor_sha256(torch.arange(6.0).reshape(2, 3).T) == tensor_sha256(
        torch.tensor([0.0, 3.0, 1.0, 4.0, 2.0, 5.0])
    )  # a non-contiguous view hashes its values in logical order
    assert tensor_sha256(torch.empty(0)) == EMPTY


def test_state_sha256_covers_names_dtypes_shapes_and_order() -> None:
    a, b = torch.ones(2), torch.zeros(1, 2, dtype=torch.float16)
    expected = hashlib.sha256(
        b"a|torch.float32|[2]|"
        + a.numpy().tobytes()
        + b"b|torch.float16|[1, 2]|"
        + b.numpy().tobytes()
    ).hexdigest()
    assert state_sha256({"a": a, "b": b}) == expected
    assert state_sha256({"b": b, "a": a}) != expected  # order matters
    assert state_sha256({"a": a.reshape(1, 2), "b": b}) != expected  # shape matters
    assert state_sha256({}) == EMPTY


def test_file_sha256_and_files_sha256(tmp_path: Path) -> None:
    one, two = tmp_path / "b.bin", tmp_path / "a.bin"
    one.write_bytes(b"abc")
    two.write_bytes(b"")
    assert file_sha256(one) == ABC
    assert file_sha256(one, chunk=1) == ABC  # chunked reads
    assert file_sha256(str(two)) == EMPTY
    assert files_sha256([one]) == ABC  # one file: its own digest
    # several (a sharded checkpoint): the digest of the digests, in sorted path order
    assert files_sha256([one, two]) == text_sha256(EMPTY + ABC) == files_sha256([two, one])
    assert json.dumps(files_sha256([one, two]))  # a plain str
