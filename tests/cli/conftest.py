"""The CLI tests' workspace (the trained clean and tuned models as files) and runner helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import save_file

from tests.conftest import Trained, run  # noqa: F401  (run: re-exported to the CLI tests)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of ``folder`` by name, to show that a failed command wrote nothing."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.fixture()
def ws(trained: Trained, tmp_path: Path) -> Path:
    save_file(trained.clean.state_dict(), tmp_path / "clean.safetensors")
    save_file(trained.tuned.state_dict(), tmp_path / "tuned.safetensors")
    return tmp_path
