"""rws.analysis.library: libraries from patches and from folders (with or without an index)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import rws
from rws.analysis.identify import identify
from rws.analysis.library import SignatureLibrary
from rws.errors import InputFileError, MalformedInputError, UsageError
from tests.analysis.conftest import HandPatch
from tests.methods.test_rws import CORRUPTIONS


def test_library_from_patches(hand_patch: HandPatch) -> None:
    a = hand_patch("a", l1_weight=[[1.0, 0.0]])
    with pytest.raises(UsageError, match="signature a has no 'corruption' tag"):
        SignatureLibrary.from_patches([a])
    with pytest.raises(UsageError, match="1 patches but 2 corruption labels"):
        SignatureLibrary.from_patches([a], corruptions=["fog", "snow"])
    lib = SignatureLibrary.from_patches([a, -a], corruptions=["snow", "fog"])
    assert len(lib) == 2 and lib.corruptions == ["fog", "snow"]
    assert [e.label for e in lib.entries] == ["a", "a"]


def test_library_from_folder(folders: dict[str, Path]) -> None:
    indexed = SignatureLibrary.from_folder(folders["lib"])
    assert len(indexed) == 5 and indexed.corruptions == sorted(CORRUPTIONS)
    assert indexed.entries[0].seed == 1 and indexed.entries[0].arch == "small-cnn"
    tagged = SignatureLibrary.from_folder(folders["tagged"])  # the checkpoint is passed over
    assert sorted(e.label for e in tagged.entries) == sorted(e.label for e in indexed.entries)
    assert {e.seed for e in tagged.entries} == {1, 2}
    query = rws.load(folders["query"])
    assert identify(query, tagged).corruption == "gaussian_noise"


def test_library_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="no such folder"):
        SignatureLibrary.from_folder(tmp_path / "missing")
    with pytest.raises(UsageError, match="no signatures"):
        SignatureLibrary.from_folder(tmp_path)
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(MalformedInputError, match=r"index.json: not valid JSON"):
        SignatureLibrary.from_folder(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({"signatures": [{"corruption": "fog"}]}))
    with pytest.raises(MalformedInputError, match=r"signatures\[0\] has no 'file' string"):
        SignatureLibrary.from_folder(tmp_path)
