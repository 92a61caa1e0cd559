"""``rws apply|remove`` on a Hugging Face folder: a folder of the same layout, or a one-line
refusal that writes nothing (issue 14)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import rws
from rws.io.folder_write import INDEX
from tests.cli.conftest import run
from tests.patching.test_sharded import SIDE, make_sharded, tiny, tree, union


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    base, tuned = tiny()
    make_sharded(tmp_path / "in", base)
    save_file(base, tmp_path / "one.safetensors")
    rws.extract(base, tuned, codec="int8", name="noise").save(tmp_path / "p.safetensors")
    return tmp_path


def test_apply_and_remove_a_sharded_folder(folder: Path) -> None:
    before = tree(folder / "in")
    code, out, err = run(
        "apply", folder / "in", f"{folder / 'p.safetensors'}:0.5", "-o", f"{folder}/out/"
    )
    assert code == 0, err
    assert f"wrote {folder}/out/: 17 tensors patched" in out
    shards = sorted(p.name for p in (folder / "in").glob("model-*.safetensors"))
    assert sorted(os.listdir(folder / "out")) == sorted([*shards, INDEX, *SIDE])
    index = json.loads((folder / "out" / INDEX).read_text())
    assert index["weight_map"] == json.loads((folder / "in" / INDEX).read_text())["weight_map"]
    want = load_file(folder / "one.safetensors")
    rws.apply(want, (rws.load(folder / "p.safetensors"), 0.5))
    got = union(folder / "out")
    assert all(torch.equal(got[k], v) for k, v in want.items())
    assert tree(folder / "in") == before
    code, out, err = run("remove", folder / "out", folder / "p.safetensors", "-o", folder / "back")
    assert code == 0 and "17 tensors restored" in out, err
    assert sorted(os.listdir(folder / "back")) == sorted(os.listdir(folder / "out"))


@pytest.mark.parametrize(
    ("src", "dest", "message"),
    [
        ("one.safetensors", "new/", "new/: is a folder; the input is one file: give a file path"),
        ("one.safetensors", "in", "in: is a folder; the input is one file: give a file path"),
        ("in", "in/sub", "is inside the input folder"),
        ("in", "in", "in: is the input folder; write to another folder"),
        ("in", "in/model-00002-of-00003.safetensors", "00003.safetensors: is also an input"),
        ("in", "p.safetensors", "p.safetensors: is also an input"),
        ("in", "full", "full: is a folder that is not empty; give a new or empty folder"),
        ("in", "afile", "afile: is a file; the input is a folder: give a folder path"),
    ],
)
def test_refusals_are_one_line_and_write_nothing(
    folder: Path, src: str, dest: str, message: str
) -> None:
    (folder / "full").mkdir()
    (folder / "full" / "x").write_text("x")
    (folder / "afile").write_text("x")
    before = tree(folder)
    code, out, err = run("apply", folder / src, folder / "p.safetensors", "-o", f"{folder}/{dest}")
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1, err
    assert lines[0].startswith("error: ") and message in lines[0], err
    assert tree(folder) == before
    code, _, err = run("remove", folder / src, folder / "p.safetensors", "-o", f"{folder}/{dest}")
    assert code == 2 and message in err and tree(folder) == before
