"""Signature analysis: similarity matrices, the signature library, identification, and the
``similarity`` / ``identify`` commands, on hand-made patches and on real RWS signatures."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
import typer
from safetensors.torch import save_file
from typer.testing import CliRunner

import rws
import rws.methods.rws  # registers the method until rws.methods imports it
from rws.analysis.signatures import (
    SignatureLibrary,
    identify,
    plot_similarity,
    shared_tensors,
    similarity,
)
from rws.cli.analysis import identify_command, similarity_command
from rws.cli.app import _Group
from rws.errors import IntegrityError, MalformedInputError, UnknownNameError, UsageError
from rws.io.figures import save_figure
from tests.methods.test_rws import CORRUPTIONS, SEEDS, zoo


def _patch(name: str, **deltas: list) -> rws.Patch:
    base = {k.replace("_", "."): torch.zeros(torch.tensor(v).shape) for k, v in deltas.items()}
    tuned = {k.replace("_", "."): torch.tensor(v, dtype=torch.float32) for k, v in deltas.items()}
    return rws.extract(base, tuned, name=name)


# --- similarity on hand-made patches -----------------------------------------------------------


def test_similarity_matches_hand_cosines() -> None:
    a = _patch("a", l1_weight=[[1.0, 0.0]], l2_weight=[[0.0, 2.0]])
    b = _patch("b", l1_weight=[[1.0, 1.0]], l2_weight=[[0.0, -2.0]])
    res = similarity([a, b, -a])
    assert res.labels == ("a", "b", "a") and res.tensors == ("l1.weight", "l2.weight")
    # overall: a = (1,0,0,2), b = (1,1,0,-2): <a,b> = -3, |a| = √5, |b| = √6
    assert res.overall[0][1] == pytest.approx(-3 / (5**0.5 * 6**0.5))
    assert res.overall[0][2] == pytest.approx(-1.0)  # a negated patch points the other way
    assert res.overall[1][1] == pytest.approx(1.0)
    assert list(res.layers) == ["l1", "l2"]
    assert res.layers["l1"][0][1] == pytest.approx(2**-0.5)
    assert res.layers["l2"][0][1] == pytest.approx(-1.0)
    assert similarity([a, b], per_layer=False).layers == {}
    assert json.loads(json.dumps(res.to_dict()))["overall"][0][0] == pytest.approx(1.0)


def test_similarity_uses_only_shared_tensors() -> None:
    a = _patch("a", l1_weight=[[1.0, 0.0]], l2_weight=[[5.0, 5.0]])
    b = _patch("b", l1_weight=[[1.0, 0.0]])
    assert shared_tensors([a, b]) == ["l1.weight"]
    assert similarity([a, b]).overall[0][1] == pytest.approx(1.0)


def test_similarity_refuses_unrelated_patches() -> None:
    a = _patch("a", l1_weight=[[1.0, 0.0]])
    with pytest.raises(IntegrityError, match="signature b shares no tensor with a"):
        similarity([a, _patch("b", l9_weight=[[1.0]])])
    with pytest.raises(IntegrityError, match=r"tensor 'l1.weight': a has shape \[1, 2\] but c has"):
        similarity([a, _patch("c", l1_weight=[[1.0], [2.0]])])
    with pytest.raises(UsageError, match="at least two patches"):
        similarity([a])


def test_plot_similarity_writes_a_png(tmp_path: Path) -> None:
    a = _patch("a", l1_weight=[[1.0, 0.0]], l2_weight=[[0.0, 2.0]])
    b = _patch("b", l1_weight=[[1.0, 1.0]], l2_weight=[[0.0, -2.0]])
    fig = plot_similarity(similarity([a, b]))
    assert len(fig.axes) == 4  # overall, layers l1 and l2, the colour bar
    save_figure(fig, tmp_path / "sim.png")
    assert (tmp_path / "sim.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["sim.png"]  # no temp file left behind


# --- real signatures ----------------------------------------------------------------------------


@functools.cache
def signatures() -> dict[tuple[str, int], rws.Patch]:
    """RWS of each robust model (first 3 layers: the convs with their BNs), tagged."""
    z = zoo()
    return {
        (c, s): rws.extract(
            z.clean,
            z.robust[c, s],
            method="rws",
            origin=z.origin,
            shallow=3,
            name=f"{c}-{s}",
            tags={"corruption": c, "seed": str(s)},
        )
        for c in CORRUPTIONS
        for s in SEEDS
    }


def test_same_corruption_signatures_are_most_similar() -> None:
    """Claim (2). Measured (overall cosine, shallow 3): gaussian_noise seeds 0.92, fog 0.94,
    contrast 0.99; across corruptions at most 0.60 (fog–contrast), gaussian_noise–others ≤ 0.18."""
    sigs = signatures()
    keys = list(sigs)
    res = similarity([sigs[k] for k in keys])
    assert list(res.layers) == ["conv1", "conv2", "conv3"]
    cos = {(a, b): res.overall[i][j] for i, a in enumerate(keys) for j, b in enumerate(keys)}
    for c in CORRUPTIONS:
        same = cos[(c, 1), (c, 2)]
        cross = max(v for (a, b), v in cos.items() if a[0] == c and b[0] != c)
        assert same > 0.85 and same > cross + 0.25, (c, same, cross)


@pytest.mark.parametrize("method", ["centroid", "knn", "logistic"])
def test_identify_leave_one_out(method: str) -> None:
    sigs = signatures()
    library = SignatureLibrary.from_patches(list(sigs.values()))
    for (c, _), patch in sigs.items():
        res = identify(patch, library.without(patch), method=method)
        assert res.corruption == c, (method, c, res.ranking)
        assert res.confidence == res.ranking[0][1] > 1 / len(CORRUPTIONS)
        assert res.nearest[0].startswith(c) and res.tensors == 15
        assert sum(p for _, p in res.ranking) == pytest.approx(1.0)


def test_identify_errors() -> None:
    a = _patch("a", l1_weight=[[1.0, 0.0]])
    lib = SignatureLibrary.from_patches([a], corruptions=["fog"])
    assert identify(a, lib).corruption == "fog"  # one class: certain
    with pytest.raises(UnknownNameError, match="unknown identification method 'svm'"):
        identify(a, lib, method="svm")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="library is empty"):
        identify(a, lib.without(a))
    with pytest.raises(IntegrityError, match="shares no tensor"):
        identify(_patch("b", l9_weight=[[1.0]]), lib)
    with pytest.raises(UsageError, match="signature a has no 'corruption' tag"):
        SignatureLibrary.from_patches([a])


# --- library folders and the commands ------------------------------------------------------------


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``lib``: all signatures but gaussian_noise-2, with an index; ``tagged``: the same without
    an index plus a checkpoint; ``query``: the held-out signature."""
    root = tmp_path_factory.mktemp("signatures")
    lib, tagged = root / "lib", root / "tagged"
    lib.mkdir()
    tagged.mkdir()
    index = []
    for (c, s), patch in signatures().items():
        if (c, s) == ("gaussian_noise", 2):
            patch.save(root / "query.rws.safetensors")
            continue
        patch.save(lib / f"{c}-{s}.rws.safetensors")
        patch.save(tagged / f"{c}-{s}.rws.safetensors")
        index.append({"file": f"{c}-{s}.rws.safetensors", "corruption": c, "seed": s,
                      "dataset": "digits", "arch": "small-cnn"})  # fmt: skip
    (lib / "index.json").write_text(json.dumps({"signatures": index}))
    save_file(zoo().clean.state_dict(), tagged / "clean.safetensors")
    return {"lib": lib, "tagged": tagged, "query": root / "query.rws.safetensors", "root": root}


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
    with pytest.raises(UsageError, match="no signatures"):
        SignatureLibrary.from_folder(tmp_path)
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(MalformedInputError, match=r"index.json: not valid JSON"):
        SignatureLibrary.from_folder(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({"signatures": [{"corruption": "fog"}]}))
    with pytest.raises(MalformedInputError, match=r"signatures\[0\] has no 'file' string"):
        SignatureLibrary.from_folder(tmp_path)


def _app() -> typer.Typer:
    app = typer.Typer(cls=_Group, pretty_exceptions_enable=False)
    app.callback()(lambda: None)
    app.command("similarity")(similarity_command)
    app.command("identify")(identify_command)
    return app


def _run(*args: str):
    return CliRunner().invoke(_app(), [str(a) for a in args])


def test_similarity_command(folders: dict[str, Path]) -> None:
    lib, png = folders["lib"], folders["root"] / "sim.png"
    files = [lib / "fog-1.rws.safetensors", lib / "fog-2.rws.safetensors", folders["query"]]
    res = _run("similarity", *files, "--per-layer", "--plot", png)
    assert res.exit_code == 0, res.output
    assert "cosine similarity over 15 shared tensors" in res.output and "layer conv3" in res.output
    assert "gaussian_noise-2" in res.output and f"wrote {png}" in res.output
    assert png.read_bytes()[:4] == b"\x89PNG"
    res = _run("similarity", *files, "--json")
    data = json.loads(res.output)
    assert res.exit_code == 0 and data["labels"] == ["fog-1", "fog-2", "gaussian_noise-2"]
    assert data["overall"][0][1] > data["overall"][0][2] and "layers" not in data
    bad = _run("similarity", files[0], folders["root"] / "missing.safetensors")
    assert bad.exit_code == 1
    assert bad.output.strip().splitlines() == [
        f"error: {folders['root'] / 'missing.safetensors'}: no such file"
    ]


def test_identify_command(folders: dict[str, Path]) -> None:
    res = _run("identify", folders["query"], "--library", folders["lib"])
    assert res.exit_code == 0, res.output
    assert "gaussian_noise (confidence" in res.output and "nearest: gaussian_noise-1" in res.output
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
