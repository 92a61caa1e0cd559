"""rws.io.safetensors_write: the streamed, atomic safetensors writer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rws.errors import OutputPathError
from rws.io.safetensors_read import TensorFile
from rws.io.safetensors_write import StreamWriter, save_tensors

DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int64,
    torch.int8,
    torch.uint8,
    torch.bool,
]


def test_stream_writer_output_reads_back_exactly_with_safetensors(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    tensors = {
        f"t{i}.{dt}".replace("torch.", ""): (torch.randn(3, 5, generator=g) * 100).to(dt)
        for i, dt in enumerate(DTYPES)
    }
    tensors["scalar"] = torch.tensor(3.5)
    tensors["empty"] = torch.zeros(0, 4)
    save_tensors(tmp_path / "a.safetensors", tensors, {"k": "v"})
    back = load_file(tmp_path / "a.safetensors")
    assert set(back) == set(tensors)
    for k, t in tensors.items():
        assert back[k].dtype == t.dtype and torch.equal(back[k], t)
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]


def test_failed_write_leaves_nothing_and_keeps_an_existing_file(tmp_path: Path) -> None:
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"previous")
    spec = {"a": (torch.float32, (2,)), "b": (torch.float32, (2,))}
    with pytest.raises(ZeroDivisionError), StreamWriter(out, spec) as w:
        w.write("a", torch.zeros(2))
        raise ZeroDivisionError
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors"]


def test_incomplete_write_is_refused(tmp_path: Path) -> None:
    spec = {"a": (torch.float32, (2,)), "b": (torch.float32, (2,))}
    with (
        pytest.raises(RuntimeError, match="closed before tensor 'b'"),
        StreamWriter(tmp_path / "o.safetensors", spec) as w,
    ):
        w.write("a", torch.zeros(2))
    assert list(tmp_path.iterdir()) == []


def test_missing_output_folder(tmp_path: Path) -> None:
    with pytest.raises(OutputPathError, match="its folder does not exist"):
        save_tensors(tmp_path / "nope" / "o.safetensors", {"a": torch.zeros(1)})


def test_streamed_pieces_copies_and_late_metadata(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    src = {"a": torch.randn(10, 3, generator=g), "b": torch.randn(7, generator=g).half()}
    save_tensors(tmp_path / "src.safetensors", src)
    tf = TensorFile(tmp_path / "src.safetensors")
    offset, size = tf.span("b")
    assert size == 14 and offset == os.path.getsize(tmp_path / "src.safetensors") - 14
    part = torch.empty(6, dtype=torch.uint8)
    tf.read_into("a", 8, memoryview(part.numpy()))
    assert torch.equal(part, src["a"].reshape(-1).view(torch.uint8)[8:14])
    spec = {"a": (torch.float32, (10, 3)), "b": (torch.float16, (7,)), "c": (torch.int8, (0,))}
    raw = memoryview(src["a"].reshape(-1).view(torch.uint8).numpy())
    done: list[int] = []
    with StreamWriter(tmp_path / "o.safetensors", spec, {"k": "0" * 8}) as w:
        w.begin("a")
        w.put(raw[:50], lambda: done.append(1))
        w.put(raw[50:])
        with pytest.raises(RuntimeError, match="too many bytes"):
            w.put(raw[:1])
        w.begin("b")
        w.copy_from(tf.fileno(), offset, size, tf.path)
        w.write("c", torch.zeros(0, dtype=torch.int8))
        w.set_metadata({"k": "12345678"})
        with pytest.raises(RuntimeError, match="does not fit"):
            w.set_metadata({"k": "x" * 100})
    tf.close()
    assert done == [1]
    back = load_file(tmp_path / "o.safetensors")
    assert torch.equal(back["a"], src["a"]) and torch.equal(back["b"], src["b"])
    assert TensorFile(tmp_path / "o.safetensors").metadata == {"k": "12345678"}


def test_a_tensor_left_incomplete_is_refused(tmp_path: Path) -> None:
    spec = {"a": (torch.float32, (2,))}
    with (
        pytest.raises(RuntimeError, match="closed before tensor 'a'"),
        StreamWriter(tmp_path / "o.safetensors", spec) as w,
    ):
        w.begin("a")
        w.put(memoryview(bytes(4)))
    assert list(tmp_path.iterdir()) == []
