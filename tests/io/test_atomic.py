"""rws.io.atomic: output appears whole or not at all, with plain-open permissions."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from rws.errors import OutputFileError, OutputPathError
from rws.io.atomic import atomic_output, temp_name, write_atomic
from rws.io.outputs import check_output, note_input, track_inputs


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


def test_temp_names_are_short_and_carry_the_pid(tmp_path: Path) -> None:
    """A 255-byte output name stays writable: the temp name keeps 64 bytes of it."""
    out = tmp_path / ("é" * 121 + ".safetensors")  # 254 bytes
    name = temp_name(str(out))
    assert len(name.encode()) <= 64 + 31 and f".{os.getpid()}." in name and name.endswith(".tmp")
    write_atomic(out, b"x")
    assert out.read_bytes() == b"x" and sorted(os.listdir(tmp_path)) == [out.name]


def test_the_output_check_refuses_special_files_system_paths_and_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OutputPathError, match=r"is a FIFO \(named pipe\); rws writes regular"):
        write_atomic(tmp_path / "fifo", "x")
    for path in ("/dev/null", "/proc/self/fd/1"):
        with pytest.raises(OutputPathError, match="is a system path"):
            check_output(path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    with pytest.raises(OutputPathError, match="inside the Hugging Face cache"):
        write_atomic(tmp_path / "cache" / "x.json", "{}")
    with track_inputs():  # a file read by the command is an input
        (tmp_path / "read.json").write_text("{}")
        note_input(tmp_path / "read.json")
        with pytest.raises(OutputPathError, match="is also an input"):
            check_output(tmp_path / "read.json")
        write_atomic(tmp_path / "read.json", "{}")  # a writer may rewrite what it read (resume)
    os.symlink(tmp_path / "read.json", tmp_path / "link.json")
    write_atomic(tmp_path / "link.json", "1")  # a link to a regular file is written through
    assert os.path.islink(tmp_path / "link.json") and (tmp_path / "read.json").read_text() == "1"


def test_the_os_refusing_a_write_is_one_error_naming_the_output(tmp_path: Path) -> None:
    out = tmp_path / "o.bin"
    for code in (errno.ENOSPC, errno.EFBIG, errno.EROFS, errno.EDQUOT):
        expect = pytest.raises(OutputFileError, match=f"{out}: cannot be written: ")
        with expect as info, atomic_output(out):
            raise OSError(code, os.strerror(code))
        assert "\n" not in str(info.value) and os.listdir(tmp_path) == []
    with pytest.raises(PermissionError), atomic_output(out):  # an input's error stays its own
        raise PermissionError(errno.EACCES, "Permission denied", "/some/input")
    with pytest.raises(KeyboardInterrupt), atomic_output(out):  # Ctrl-C (and SIGTERM in the CLI)
        raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []
