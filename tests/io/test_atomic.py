"""rws.io.atomic: output appears whole or not at all, with plain-open permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from rws.errors import OutputPathError
from rws.io.atomic import atomic_output, write_atomic


def test_a_clean_exit_renames_into_place_with_umask_permissions(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    with atomic_output(out) as tmp:
        assert Path(tmp).parent == tmp_path and not out.exists()
        Path(tmp).write_text("{}")
    assert out.read_text() == "{}" and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~mask
    write_atomic(out, b"\x00\x01")
    assert out.read_bytes() == b"\x00\x01"


def test_an_error_leaves_the_previous_file_and_no_temp_file(tmp_path: Path) -> None:
    out = tmp_path / "a.txt"
    write_atomic(out, "old")
    with pytest.raises(KeyError), atomic_output(out) as tmp:
        Path(tmp).write_text("half")
        raise KeyError("x")
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    with pytest.raises(OutputPathError, match="its folder does not exist"):
        write_atomic(tmp_path / "no" / "a.txt", "x")
