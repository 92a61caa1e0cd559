"""The CLI tests' workspace (the trained clean and tuned models as files) and runner helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import save_file
from typer.testing import CliRunner

from rws.cli.app import app
from tests.conftest import Trained

runner = CliRunner()


def run(*args: str | Path) -> tuple[int, str, str]:
    """``rws ARGS`` in-process: exit code, stdout, stderr."""
    res = runner.invoke(app, [str(a) for a in args])
    return res.exit_code, res.stdout, res.stderr


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of ``folder`` by name, to show that a failed command wrote nothing."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.fixture()
def ws(trained: Trained, tmp_path: Path) -> Path:
    save_file(trained.clean.state_dict(), tmp_path / "clean.safetensors")
    save_file(trained.tuned.state_dict(), tmp_path / "tuned.safetensors")
    return tmp_path
