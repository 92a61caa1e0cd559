"""The app: version, help, global options (--quiet, --debug) and the one error boundary."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rws._version import __version__
from rws.cli.app import COMMANDS, app
from rws.errors import RwsError
from rws.runtime.progress import ENV_OFF, progress_enabled
from tests.cli.conftest import run


def test_version_and_help() -> None:
    code, out, _ = run("--version")
    assert code == 0 and out.strip() == f"rws {__version__}"
    for cmd in ["extract", "apply", "remove", "compose", "scale", "inspect", "diff", "list"]:
        code, out, _ = run(cmd, "--help")
        assert code == 0 and "Usage" in out, cmd


def test_debug_shows_traceback(ws: Path) -> None:
    res = CliRunner().invoke(
        app,
        [
            "--debug",
            "apply",
            str(ws / "clean.safetensors"),
            str(ws / "nope.safetensors"),
            "-o",
            str(ws / "o.safetensors"),
        ],
    )
    assert res.exit_code != 0 and isinstance(res.exception, RwsError)


def test_every_command_has_help_with_an_example() -> None:
    code, out, _ = run("--help")
    assert code == 0 and all(name in out for name in COMMANDS)
    for name in COMMANDS:
        code, out, _ = run(name, "--help")
        assert code == 0 and "Usage" in out and "Example" in out, name


def test_quiet_turns_every_progress_bar_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_OFF, "0")  # restored after the test
    assert progress_enabled(True)
    code, out, _ = run("--quiet", "list", "codecs")
    assert code == 0 and "fp32" in out
    assert os.environ[ENV_OFF] == "1" and not progress_enabled(True)


def test_without_quiet_progress_stays_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_OFF, "0")
    assert run("list", "codecs")[0] == 0
    assert os.environ[ENV_OFF] == "0" and progress_enabled(True)


def test_a_library_error_is_one_line_with_its_exit_code(tmp_path: Path) -> None:
    code, out, err = run("inspect", tmp_path / "missing.safetensors")
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [f"error: {tmp_path / 'missing.safetensors'}: no such file"]
