from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rws.errors import OutputPathError
from rws.safetensors_io import StreamWriter, save_tensors

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
