"""rws.io.safetensors_read (strict header, positioned reads) and rws.io.safetensors_layout."""

from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path

import pytest
import torch

from rws.errors import CheckpointError, InputFileError, InputKindError, UsageError
from rws.io.safetensors_layout import CODE_DTYPES, dtype_code, nbytes, tensor_bytes
from rws.io.safetensors_read import TensorFile, read_header
from rws.io.safetensors_write import save_tensors


def _raw(path: Path, header: dict, data: bytes) -> Path:
    """A safetensors file written byte by byte, so that any header can be tried."""
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + data)
    return path


def _entry(dtype: str, shape: list[int], start: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}


def test_tensors_come_in_storage_order_and_read_in_pieces(tmp_path: Path) -> None:
    a, b = torch.arange(6, dtype=torch.float32), torch.tensor([1, 2], dtype=torch.int16)
    header = {"b": _entry("I16", [2], 24, 28), "a": _entry("F32", [2, 3], 0, 24)}
    header["__metadata__"] = {"k": "v"}
    path = _raw(tmp_path / "x.safetensors", header, bytes(tensor_bytes(a)) + bytes(tensor_bytes(b)))
    tf = TensorFile(path)
    assert tf.keys() == ["a", "b"] and list(tf) == ["a", "b"] and "a" in tf and "c" not in tf
    assert tf.metadata == {"k": "v"} and tf.shape("a") == (2, 3) and tf.dtype("b") == torch.int16
    assert tf.nbytes("a") == 24 and tf.span("b") == (path.stat().st_size - 4, 4)
    assert torch.equal(tf.get("a"), a.reshape(2, 3)) and torch.equal(tf.get("b"), b)
    part = bytearray(8)
    tf.read_into("a", 4, memoryview(part))
    assert bytes(part) == bytes(tensor_bytes(a))[4:12]
    with pytest.raises(ValueError, match=r"bytes 20\+8 are outside tensor 'a'"):
        tf.read_into("a", 20, memoryview(part))
    tf.close()
    tf.close()  # idempotent


@pytest.mark.parametrize(
    ("header", "size", "message"),
    [
        ({"a": _entry("F32", [2], 0, 8), "b": _entry("F32", [1], 4, 8)}, 8, "'b' overlaps"),
        ({"a": _entry("F32", [1], 4, 8)}, 8, "'a' leaves a hole before it"),
        ({"a": _entry("F32", [3], 0, 8)}, 8, "'a': its offsets do not match its shape and dtype"),
        ({"a": _entry("Q7", [2], 0, 8)}, 8, "tensor 'a' has a malformed header entry"),
        ({"a": {"dtype": "F32", "shape": [2]}}, 8, "tensor 'a' has a malformed header entry"),
        ({"__metadata__": {"k": 1}}, 0, "__metadata__ must map strings to strings"),
        ({"a": _entry("F32", [2], 0, 8)}, 9, r"holds \d+ bytes but its header describes \d+"),
    ],
)
def test_inconsistent_headers_are_refused(
    tmp_path: Path, header: dict, size: int, message: str
) -> None:
    path = _raw(tmp_path / "bad.safetensors", header, bytes(size))
    with pytest.raises(CheckpointError, match=message):
        read_header(path)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(InputKindError, match="is a folder, not a regular file"):
        read_header(tmp_path)
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(InputKindError, match=r"is a FIFO \(named pipe\), not a regular file"):
        read_header(tmp_path / "pipe")  # refused before open(): it would block forever
    with pytest.raises(InputFileError, match="no such file"):
        read_header(tmp_path / "missing.safetensors")


def test_layout_helpers() -> None:
    assert dtype_code(torch.bfloat16) == "BF16" and CODE_DTYPES["F8_E4M3"] == torch.float8_e4m3fn
    with pytest.raises(UsageError, match=r"dtype torch\.complex64 cannot be stored in safetensors"):
        dtype_code(torch.complex64)
    assert nbytes(torch.float16, (3, 5)) == 30 and nbytes(torch.int64, ()) == 8
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    assert bytes(tensor_bytes(t.T)) == bytes(tensor_bytes(t.T.contiguous()))  # copied when strided
    assert bytes(tensor_bytes(torch.zeros(0, 3))) == b""
    assert bytes(tensor_bytes(t)) == t.numpy().tobytes()  # little-endian raw bytes


def test_what_the_writer_writes_reads_back(tmp_path: Path) -> None:
    tensors = {"z": torch.randn(4, 4).half(), "a": torch.tensor(True), "m": torch.zeros(0)}
    save_tensors(tmp_path / "w.safetensors", tensors, {"rws": "{}"})
    tf = TensorFile(tmp_path / "w.safetensors")
    assert tf.keys() == ["z", "a", "m"] and tf.metadata == {"rws": "{}"}
    for k, v in tensors.items():
        assert tf.get(k).dtype == v.dtype and torch.equal(tf.get(k), v)
    tf.close()


def _crafted(path: Path, header: str, data: bytes = b"") -> Path:
    raw = header.encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ('{"a": %s, "a": %s}' % ((json.dumps(_entry("F32", [1], 0, 4)),) * 2), "duplicate key 'a'"),
        ('{"a": {"dtype": "F32", "dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',
         "duplicate key 'dtype'"),
        ('{"a": {"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]}}', "not a list of non-neg"),
        ('{"a": {"dtype": "F32", "shape": [true], "data_offsets": [0, 4]}}', "not a list of non-neg"),
        ('{"a": {"dtype": "F32", "shape": ["1"], "data_offsets": [0, 4]}}', "not a list of non-neg"),
        ('{"a": {"dtype": "F32", "shape": [1e400], "data_offsets": [0, 4]}}', "1e400 is out of r"),
        ('{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4e0]}}', "are not two non-neg"),
        ('{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 1e400]}}', "out of range"),
        ('{"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}', "not a list of non-neg"),
        ('{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, NaN]}}', "NaN is not a JSON n"),
        ('{"a": [' + "[" * 200_000 + "]" * 200_000 + "]}", "nested too deeply"),
        ('{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}', "not valid JSON"),
    ],
)  # fmt: skip
def test_crafted_headers_are_refused_in_one_line(tmp_path: Path, header: str, message: str) -> None:
    """Issue 17 items 12 and 17: duplicate keys, dims that are not integers, huge numbers and
    deep nesting are malformed input (exit 3), never a crash or a silent last-key-wins."""
    path = _crafted(tmp_path / "bad.safetensors", header, bytes(4))
    with pytest.raises(CheckpointError, match=message) as info:
        read_header(path)
    assert info.value.exit_code == 3 and "\n" not in str(info.value)


def test_a_header_of_many_empty_tensors_reads_in_linear_time(tmp_path: Path) -> None:
    """20,000 empty tensors (a 1.2 MB header) read in well under a second (issue 17 item 17)."""
    entries = {f"t{i}": _entry("F32", [0], 0, 0) for i in range(20_000)}
    path = _raw(tmp_path / "empty.safetensors", entries, b"")
    start = time.perf_counter()
    header, _ = read_header(path)
    assert len(header) == 20_000 and time.perf_counter() - start < 2.0
