"""``rws similarity`` and ``rws identify`` (rws.cli.analysis) on a library folder of real
signatures: tables, JSON, plots and the one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from rws.cli.analysis import identify_command, similarity_command
from rws.cli.app import _Group


def _app() -> typer.Typer:
    app = typer.Typer(cls=_Group, pretty_exceptions_enable=False)
    app.callback()(lambda: None)
    app.command("similarity")(similarity_command)
    app.command("identify")(identify_command)
    return app


def _run(*args: str | Path):
    return CliRunner().invoke(_app(), [str(a) for a in args])


def test_similarity_command(folders: dict[str, Path]) -> None:
    lib, png = folders["lib"], folders["root"] / "sim.png"
    files = [lib / "fog-1.rws.safetensors", lib / "fog-2.rws.safetensors", folders["query"]]
    res = _run("similarity", *files, "--per-layer", "--plot", png)
    assert res.exit_code == 0, res.output
    assert "cosine similarity over 9 shared tensors" in res.output and "layer conv3" in res.output
    assert "gaussian_noise-2" in res.output and f"wrote {png}" in res.output
    assert png.read_bytes()[:4] == b"\x89PNG"
    res = _run("similarity", *files, "--json")
    data = json.loads(res.output)
    assert res.exit_code == 0 and data["labels"] == ["fog-1", "fog-2", "gaussian_noise-2"]
    assert data["overall"][0][1] > data["overall"][0][2] and "layers" not in data
    res = _run("similarity", *files, "--with-running-stats")
    assert res.exit_code == 0 and "cosine similarity over 15 shared tensors" in res.output
    bad = _run("similarity", files[0], folders["root"] / "missing.safetensors")
    assert bad.exit_code == 1
    assert bad.output.strip().splitlines() == [
        f"error: {folders['root'] / 'missing.safetensors'}: no such file"
    ]


def test_identify_command(folders: dict[str, Path]) -> None:
    res = _run("identify", folders["query"], "--library", folders["lib"])
    assert res.exit_code == 0, res.output
    assert "gaussian_noise (score " in res.output and "nearest: gaussian_noise-1" in res.output
    res = _run("identify", folders["query"], "--library", folders["lib"], "--method", "knn",
               "--json")  # fmt: skip
    assert res.exit_code == 0 and json.loads(res.output)["corruption"] == "gaussian_noise"
    bad = _run("identify", folders["query"], "--library", folders["lib"], "--method", "svm")
    assert bad.exit_code == 2
    assert bad.output.strip().splitlines() == [
        "error: unknown identification method 'svm'; choose one of: centroid, knn, logistic"
    ]
    empty = folders["root"] / "empty"
    empty.mkdir()
    bad = _run("identify", folders["query"], "--library", empty)
    assert bad.exit_code == 2 and len(bad.output.strip().splitlines()) == 1
