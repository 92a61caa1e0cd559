"""Fixtures for signature analysis: hand-made patches, real RWS signatures of the digits zoo, and
library folders written from them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import rws
from tests.methods.test_rws import CORRUPTIONS, SEEDS, zoo

HandPatch = Callable[..., rws.Patch]
Signatures = dict[tuple[str, int], rws.Patch]


def _hand_patch(name: str, **deltas: list) -> rws.Patch:
    """A patch whose deltas are ``deltas`` (``l1_weight=[[…]]`` names tensor ``l1.weight``)."""
    base = {k.replace("_", "."): torch.zeros(torch.tensor(v).shape) for k, v in deltas.items()}
    tuned = {k.replace("_", "."): torch.tensor(v, dtype=torch.float32) for k, v in deltas.items()}
    return rws.extract(base, tuned, name=name)


@pytest.fixture
def hand_patch() -> HandPatch:
    """``hand_patch(name, l1_weight=[[1.0, 0.0]], …)``: a patch with exactly these deltas."""
    return _hand_patch


@pytest.fixture(scope="session")
def signatures() -> Signatures:
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


@pytest.fixture(scope="session")
def folders(tmp_path_factory: pytest.TempPathFactory, signatures: Signatures) -> dict[str, Path]:
    """``lib``: all signatures but gaussian_noise-2, with an index; ``tagged``: the same without
    an index plus a checkpoint; ``query``: the held-out signature."""
    root = tmp_path_factory.mktemp("signatures")
    lib, tagged = root / "lib", root / "tagged"
    lib.mkdir()
    tagged.mkdir()
    index = []
    for (c, s), patch in signatures.items():
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
