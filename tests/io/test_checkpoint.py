from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from rws.errors import CheckpointError, InputFileError, OutputPathError, UnsafeInputError
from rws.io.checkpoint import check_output_path, open_checkpoint
from rws.io.hashing import tensor_sha256


class Exploit:
    """Unpickling this would run a command (it must never be)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _sd() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "conv.weight": torch.randn(4, 3, 3, 3, generator=g),
        "bn.running_var": torch.rand(4, generator=g),
        "bn.num_batches_tracked": torch.tensor(7),
    }


def test_safetensors_file_reads_lazily_with_shapes_and_dtypes(tmp_path: Path) -> None:
    sd = _sd()
    save_file(sd, tmp_path / "m.safetensors", metadata={"a": "b"})
    ck = open_checkpoint(tmp_path / "m.safetensors")
    assert set(ck.keys()) == set(sd)
    assert (
        ck.shape("conv.weight") == (4, 3, 3, 3)
        and ck.dtype("bn.num_batches_tracked") == torch.int64
    )
    assert torch.equal(ck.get("conv.weight"), sd["conv.weight"]) and ck.metadata["a"] == "b"
    assert ck.numel() == 108 + 4 + 1


def test_sharded_folder(tmp_path: Path) -> None:
    sd = _sd()
    save_file({"conv.weight": sd["conv.weight"]}, tmp_path / "model-00001-of-00002.safetensors")
    save_file(
        {k: v for k, v in sd.items() if k != "conv.weight"},
        tmp_path / "model-00002-of-00002.safetensors",
    )
    weight_map = {
        "conv.weight": "model-00001-of-00002.safetensors",
        "bn.running_var": "model-00002-of-00002.safetensors",
        "bn.num_batches_tracked": "model-00002-of-00002.safetensors",
    }
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    ck = open_checkpoint(tmp_path)
    assert {k: tensor_sha256(ck.get(k)) for k in ck} == {k: tensor_sha256(v) for k, v in sd.items()}
    with pytest.raises(OutputPathError, match="is also an input"):
        check_output_path(tmp_path / "model-00001-of-00002.safetensors", [tmp_path])


@pytest.mark.parametrize("wrapper", ["plain", "state_dict", "model", "dataparallel"])
def test_pickles_with_wrappers_and_module_prefix(tmp_path: Path, wrapper: str) -> None:
    sd = _sd()
    obj = {
        "plain": sd,
        "state_dict": {"state_dict": sd, "epoch": 3},
        "model": {"model": sd},
        "dataparallel": {"module." + k: v for k, v in sd.items()},
    }[wrapper]
    torch.save(obj, tmp_path / "m.pt")
    ck = open_checkpoint(tmp_path / "m.pt")
    assert list(ck.keys()) == list(sd) and all(torch.equal(ck.get(k), v) for k, v in sd.items())


def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"w": torch.zeros(1), "x": Exploit(marker)}, tmp_path / "evil.pt")
    with pytest.raises(
        UnsafeInputError, match=r"evil\.pt: refused: the pickle needs more than plain tensors"
    ) as e:
        open_checkpoint(tmp_path / "evil.pt")
    assert e.value.exit_code == 5 and not marker.exists()


def test_pickle_that_is_not_a_state_dict(tmp_path: Path) -> None:
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"list\.pt: holds a list, not a state dict"):
        open_checkpoint(tmp_path / "list.pt")
    torch.save({"w": torch.zeros(1), "lr": 0.1}, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match="entry 'lr' is a float, not a tensor"):
        open_checkpoint(tmp_path / "mixed.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(CheckpointError, match=r"junk\.pt: not a readable torch checkpoint"):
        open_checkpoint(tmp_path / "junk.pt")


def test_missing_and_unreadable(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match=r"nope\.safetensors: no such file"):
        open_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(InputFileError, match=r"folder has no model.safetensors"):
        open_checkpoint(tmp_path)


def test_truncated_corrupt_and_lfs_pointer(tmp_path: Path) -> None:
    save_file(_sd(), tmp_path / "m.safetensors")
    raw = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(raw[:-10])
    with pytest.raises(
        CheckpointError,
        match=r"cut\.safetensors: holds \d+ bytes but its header describes \d+ \(truncated\?\)",
    ):
        open_checkpoint(tmp_path / "cut.safetensors")
    (tmp_path / "short.safetensors").write_bytes(raw[:5])
    with pytest.raises(CheckpointError, match="too short to be a safetensors file"):
        open_checkpoint(tmp_path / "short.safetensors")
    (tmp_path / "headcut.safetensors").write_bytes(raw[:40])
    with pytest.raises(CheckpointError, match="header length exceeds the file size"):
        open_checkpoint(tmp_path / "headcut.safetensors")
    bad = bytearray(raw)
    bad[8:10] = b"!!"
    (tmp_path / "badjson.safetensors").write_bytes(bytes(bad))
    with pytest.raises(CheckpointError, match="header is not valid JSON"):
        open_checkpoint(tmp_path / "badjson.safetensors")
    (tmp_path / "lfs.safetensors").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 123\n"
    )
    with pytest.raises(CheckpointError, match="this is a Git LFS pointer, not weights"):
        open_checkpoint(tmp_path / "lfs.safetensors")
