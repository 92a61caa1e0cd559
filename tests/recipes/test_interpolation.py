"""rws.recipes.interpolation (α given or chosen) and ``rws extract --method interpolation``."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import rws
from rws.errors import UsageError
from tests.conftest import Trained
from tests.recipes.conftest import run


def test_interpolate_fixed_alpha_is_the_midpoint(trained: Trained) -> None:
    p = rws.interpolate(trained.clean, trained.tuned, alpha=0.5)
    assert p.kind == "interpolation" and p.scale == 0.5
    m = copy.deepcopy(trained.clean)
    rws.apply(m, p)
    a, b, c = trained.clean.state_dict(), trained.tuned.state_dict(), m.state_dict()
    for k in p.tensors:
        assert torch.allclose(c[k], (a[k] + b[k]) / 2, atol=1e-6), k


def test_interpolate_records_alpha_and_passes_extract_options(trained: Trained) -> None:
    p = rws.interpolate(trained.clean, trained.tuned, alpha=0.25, codec="int8", name="q", shallow=1)
    assert (p.kind, p.scale, p.name) == ("interpolation", 0.25, "q")
    assert p.provenance["alpha"] == 0.25 and p.provenance["method"] == "interpolation"
    assert {t.encoded.codec for t in p.tensors.values() if t.encoded.codec != "fp16"} == {"int8"}
    assert (
        p.provenance["selection"]["shallow"] == 1 and len(p.provenance["selection"]["layers"]) == 1
    )
    with pytest.raises(UsageError, match="give a number or auto"):
        rws.interpolate(trained.clean, trained.tuned, alpha="half")
    with pytest.raises(UsageError, match=r"needs validation data \(--data"):
        rws.interpolate(trained.clean, trained.tuned, alpha="auto")


def test_cli_extract_interpolation(files: Path) -> None:
    f = files
    code, _, err = run("extract", f / "clean.safetensors", f / "tuned.safetensors", "--method",
                       "interpolation", "--alpha", "0.25", "-o", f / "i.safetensors")  # fmt: skip
    assert code == 0, err
    assert rws.load(f / "i.safetensors").scale == 0.25
    code, out, err = run("extract", f / "clean.safetensors", f / "tuned.safetensors", "--method",
                         "interpolation", "--alpha", "auto", "--data", "digits", "--arch",
                         "small-cnn", "--criterion", "clean", "--plot", f / "i.png",
                         "-o", f / "auto.safetensors")  # fmt: skip
    assert code == 0, err
    p = rws.load(f / "auto.safetensors")
    curve = p.provenance["alpha_curve"]
    alphas = [pt["alpha"] for pt in curve["points"]]
    assert p.scale == curve["chosen"] and {round(0.1 * i, 1) for i in range(11)} <= set(alphas)
    assert len(alphas) > 11 and alphas == sorted(alphas)  # the grid, then the local refinement
    assert max(pt["clean"] for pt in curve["points"]) == next(
        pt["clean"] for pt in curve["points"] if pt["alpha"] == p.scale
    )
    assert (f / "i.png").stat().st_size > 1000 and "robust (PGD)" in out
    for args, what in (
        (["--data", "digits"], "go with --alpha auto"),
        (["--alpha", "auto", "--data", "digits", "--layers", "3"], "only auto"),
        (["--method", "interpolation"], "--alpha"),
        (["--method", "interpolation", "--alpha", "auto"], "--data"),
        (["--method", "interpolation", "--alpha", "x"], "number or auto"),
    ):
        code, _, err = run("extract", f / "clean.safetensors", f / "tuned.safetensors", *args,
                           "-o", f / "bad.safetensors")  # fmt: skip
        assert code == 2 and err.count("\n") == 1 and what in err, (args, err)
    assert not (f / "bad.safetensors").exists()
