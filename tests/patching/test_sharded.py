"""Checkpoint folders (Hugging Face layout) in, folders of the same layout out (issue 14)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import rws
from rws.errors import OutputPathError
from rws.io.folder_write import INDEX
from rws.models import create_model
from rws.patching.format import APPLIED_KEY

SIDE = {"config.json": b'{"model_type": "small-cnn"}', "tokenizer_config.json": b"{}"}


def tiny() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A small CNN's state dict (a float16 layer among float32 ones) and a nudged copy."""
    torch.manual_seed(0)
    base = {k: v.clone() for k, v in create_model("small-cnn").state_dict().items()}
    base["fc.weight"] = base["fc.weight"].half()
    g = torch.Generator().manual_seed(1)
    tuned = {
        k: (v.float() + 0.01 * torch.randn(v.shape, generator=g)).to(v.dtype)
        if v.is_floating_point()
        else v
        for k, v in base.items()
    }
    return base, tuned


def make_sharded(folder: Path, sd: dict[str, torch.Tensor], n: int = 3) -> dict[str, str]:
    """``sd`` as a Hugging Face sharded folder: ``n`` shards, the index, config.json and the
    files that must not be copied (weights in another format, a sub-folder, a hidden file)."""
    folder.mkdir()
    names = list(sd)
    cut = [round(i * len(names) / n) for i in range(n + 1)]
    weight_map = {}
    for i in range(n):
        shard = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        part = {k: sd[k] for k in names[cut[i] : cut[i + 1]]}
        save_file(part, folder / shard, metadata={"format": "pt", "origin": f"shard {i}"})
        weight_map.update(dict.fromkeys(part, shard))
    index = {"metadata": {"total_size": 1, "total_parameters": 7}, "weight_map": weight_map}
    (folder / INDEX).write_text(json.dumps(index))
    for name, data in SIDE.items():
        (folder / name).write_bytes(data)
    torch.save(sd, folder / "pytorch_model.bin")
    (folder / "original").mkdir()
    (folder / "original" / "consolidated.00.pth").write_bytes(b"unpatched")
    (folder / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    return weight_map


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path (hidden ones included)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def union(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out.update(load_file(shard))
    return out


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(
        {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    )


@pytest.mark.parametrize("named", [True, False])  # True: the stack is filled in while streaming
def test_a_sharded_folder_gives_a_folder_of_the_same_layout(tmp_path: Path, named: bool) -> None:
    base, tuned = tiny()
    p = rws.extract(base, tuned, codec="int8", name="noise" if named else "")
    weight_map = make_sharded(tmp_path / "in", base)
    before = tree(tmp_path / "in")
    res = rws.apply_file(tmp_path / "in", [(p, 0.8)], tmp_path / "out")
    out = tmp_path / "out"
    assert res.output == os.fspath(out) and res.report.touched == len(p.tensors)
    shards = sorted(set(weight_map.values()))
    assert sorted(os.listdir(out)) == sorted([*shards, INDEX, *SIDE])
    assert all((out / k).read_bytes() == v for k, v in SIDE.items())
    index = json.loads((out / INDEX).read_text())
    total = sum(t.numel() * t.element_size() for t in base.values())
    assert index == {
        "metadata": {"total_size": total, "total_parameters": 7},
        "weight_map": weight_map,
    }
    for i, shard in enumerate(shards):  # the same tensors per shard, the shard's own metadata
        with safe_open(tmp_path / "in" / shard, "pt") as a, safe_open(out / shard, "pt") as b:
            assert sorted(a.keys()) == sorted(b.keys())
            meta = b.metadata()
        assert meta["format"] == "pt" and meta["origin"] == f"shard {i}"
        assert json.loads(meta[APPLIED_KEY]) == res.stack
    want = {k: v.clone() for k, v in base.items()}
    rws.apply(want, (p, 0.8))
    got = union(out)
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert got[k].dtype == v.dtype and torch.equal(_bits(got[k]), _bits(v)), k
    assert tree(tmp_path / "in") == before  # the input is untouched
    assert sorted(os.listdir(tmp_path)) == ["in", "out"]  # no temp folder left
    assert rws.describe(out)["applied"] == res.stack

    back = rws.remove_file(out, [p], tmp_path / "back/")
    assert back.stack == [] and sorted(os.listdir(tmp_path / "back")) == sorted(os.listdir(out))
    rws.remove(want, (p, 0.8))  # the in-memory removal, bit for bit
    restored = union(tmp_path / "back")
    assert all(torch.equal(_bits(restored[k]), _bits(v)) for k, v in want.items())
    with safe_open(tmp_path / "back" / shards[0], "pt") as f:
        assert APPLIED_KEY not in f.metadata()


def test_an_output_ending_in_safetensors_merges_the_folder(tmp_path: Path) -> None:
    base, tuned = tiny()
    p = rws.extract(base, tuned, codec="fp16", name="noise")
    make_sharded(tmp_path / "in", base, n=2)
    rws.apply_file(tmp_path / "in", [p], tmp_path / "merged.safetensors")
    want = {k: v.clone() for k, v in base.items()}
    rws.apply(want, p)
    got = load_file(tmp_path / "merged.safetensors")
    assert all(torch.equal(_bits(got[k]), _bits(v)) for k, v in want.items())
    rws.apply_file(tmp_path / "in", [p], tmp_path / "plain", folder=False)
    assert (tmp_path / "plain").is_file()


def test_a_folder_with_one_model_safetensors(tmp_path: Path) -> None:
    base, tuned = tiny()
    p = rws.extract(base, tuned, codec="fp32", name="noise")
    (tmp_path / "in").mkdir()
    save_file(base, tmp_path / "in" / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "in" / "config.json").write_bytes(SIDE["config.json"])
    (tmp_path / "out").mkdir()  # an existing empty folder is fine
    rws.apply_file(tmp_path / "in", [p], tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "model.safetensors"]
    want = {k: v.clone() for k, v in base.items()}
    rws.apply(want, p)
    got = load_file(tmp_path / "out" / "model.safetensors")
    assert all(torch.equal(_bits(got[k]), _bits(v)) for k, v in want.items())


def test_wrong_outputs_are_refused_and_write_nothing(tmp_path: Path) -> None:
    base, tuned = tiny()
    p = rws.extract(base, tuned, codec="int8", name="noise")
    make_sharded(tmp_path / "in", base)
    save_file(base, tmp_path / "one.safetensors")
    make_sharded(tmp_path / "late", {**base, "fc.bias": base["fc.bias"] + 1})  # in the last shard
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    (tmp_path / "afile").write_text("x")
    before = tree(tmp_path)
    refused = [
        (tmp_path / "one.safetensors", tmp_path / "full", "is a folder; the input is one file"),
        (tmp_path / "one.safetensors", f"{tmp_path}/new/", "is a folder; the input is one file"),
        (base, tmp_path / "full", "is a folder; the input is in memory"),
        (tmp_path / "in", tmp_path / "in", "is the input folder"),
        (tmp_path / "in", f"{tmp_path}/in/", "is the input folder"),
        (tmp_path / "in", tmp_path / "in" / "patched", "is inside the input folder"),
        (tmp_path / "in", tmp_path / "full", "is a folder that is not empty"),
        (tmp_path / "in", tmp_path / "afile", "is a file; the input is a folder: give a folder"),
        (tmp_path / "in", tmp_path / "in" / "model-00001-of-00003.safetensors", "also an input"),
    ]
    for src, out, msg in refused:
        with pytest.raises(OutputPathError, match=msg) as e:
            rws.apply_file(src, [p], out)
        assert e.value.exit_code == 2 and "\n" not in str(e.value)
    with pytest.raises(OutputPathError, match="its folder does not exist"):
        rws.apply_file(tmp_path / "in", [p], tmp_path / "no" / "out")
    with pytest.raises(rws.RwsError, match="differs from the base"):  # mid-stream: base mismatch
        rws.apply_file(tmp_path / "in", [rws.extract(tuned, base, codec="int8")], tmp_path / "o")
    for patch in (p, rws.extract(base, tuned, codec="int8")):  # after the first shards are written
        with pytest.raises(rws.RwsError, match=r"'fc\.bias' differs from the base"):
            rws.apply_file(tmp_path / "late", [patch], tmp_path / "o")
    assert tree(tmp_path) == before
    assert sorted(os.listdir(tmp_path)) == sorted({Path(k).parts[0] for k in before})
