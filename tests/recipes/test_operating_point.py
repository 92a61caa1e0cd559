"""The operating-point search: α (and layers) chosen on validation data under a clean budget,
rws.apply(scale="auto"), validation data forms and the bad-input cases."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import rws
from rws.data import ImageDataset, Split
from rws.errors import UsageError
from rws.recipes.alpha import choose_alpha, refinement
from rws.recipes.operating_point import layer_candidates, patch_layers
from rws.recipes.validation import validation_split
from tests.conftest import Trained, run

# one corruption at one severity, a short grid: each search is a few seconds on the small CNN
FAST = {"corruptions": ["gaussian_noise"], "severity": (4, 4), "grid": (0, 0.25, 0.5, 1)}


def _val(digits: ImageDataset, n: int = 150) -> tuple[torch.Tensor, torch.Tensor]:
    return digits.val.x[:n], digits.val.y[:n]


def test_refinement_steps_between_the_grid_neighbours() -> None:
    assert refinement((0, 0.1, 0.2), 0.1, 0.025) == [0.025, 0.05, 0.075, 0.125, 0.15, 0.175]
    assert refinement((0, 0.5, 1), 0.0, 0.2) == [0.2, 0.4]  # α = 0: only upwards
    assert refinement((0, 0.5, 1), 1.0, 0.2) == [0.6, 0.8]
    assert refinement((0, 1), 1.0, 0.0) == []
    assert layer_candidates(1) == [1] and layer_candidates(4) == [1, 2, 4]
    assert layer_candidates(20) == [1, 2, 4, 8, 16, 20]


def test_clean_budget_in_points() -> None:
    from rws.recipes.alpha import AlphaPoint

    pts = [AlphaPoint(0.0, 0.90, 0.50, float("nan")), AlphaPoint(0.5, 0.895, 0.70, float("nan")),
           AlphaPoint(1.0, 0.85, 0.80, float("nan"))]  # fmt: skip
    assert choose_alpha(pts, {"corrupted": 1}, None, max_clean_drop=1.0).alpha == 0.5
    assert choose_alpha(pts, {"corrupted": 1}, None, max_clean_drop=5.0).alpha == 1.0
    assert choose_alpha(pts, {"corrupted": 1}, None, max_clean_drop=0.0).alpha == 0.0


def test_auto_alpha_meets_the_budget_and_records_the_search(
    trained: Trained, digits: ImageDataset
) -> None:
    before = {k: v.clone() for k, v in trained.clean.state_dict().items()}
    p = rws.extract(trained.clean, trained.tuned, alpha="auto", data=_val(digits),
                    max_clean_drop=1.0, **FAST)  # fmt: skip
    assert all(torch.equal(before[k], v) for k, v in trained.clean.state_dict().items())
    op = p.provenance["operating_point"]
    curve = op["curve"]
    base = next(pt for pt in curve["points"] if pt["alpha"] == 0)
    chosen = next(pt for pt in curve["points"] if pt["alpha"] == p.scale)
    assert 0 < p.scale < 1 and op["budget_met"] and op["layers"] is None
    assert chosen["clean"] >= base["clean"] - 0.01 - 1e-9  # within 1 point
    assert chosen["corrupted"] > base["corrupted"] + 0.05  # and much more robust
    feasible = [pt for pt in curve["points"] if pt["clean"] >= base["clean"] - 0.01 - 1e-9]
    assert chosen["corrupted"] == max(pt["corrupted"] for pt in feasible)
    assert len(curve["points"]) > 4  # grid + refinement
    assert op["rule"]["max_clean_drop"] == 1.0 and op["rule"]["units"] == "accuracy points"
    assert op["data"]["n_examples"] == 150 and len(op["data"]["sha256"]) == 64
    # the same examples as a Split, an ImageDataset's val or a DataLoader: the same choice
    x, y = _val(digits)
    loader = DataLoader(TensorDataset(x, y), batch_size=40)
    again = rws.extract(trained.clean, trained.tuned, alpha="auto", data=loader, **FAST)
    assert again.scale == p.scale
    assert again.provenance["operating_point"]["data"]["sha256"] == op["data"]["sha256"]


def test_budget_no_alpha_meets_gives_alpha_zero(trained: Trained, digits: ImageDataset) -> None:
    g = torch.Generator().manual_seed(0)
    wrecked = copy.deepcopy(trained.clean)
    with torch.no_grad():
        for w in wrecked.parameters():
            w.add_(50 * torch.randn(w.shape, generator=g))
    p = rws.extract(trained.clean, wrecked, alpha="auto", data=_val(digits), max_clean_drop=0.0,
                    **FAST)  # fmt: skip
    assert p.scale == 0.0 and p.provenance["operating_point"]["budget_met"] is False


def test_layers_auto_keeps_only_the_chosen_layers(trained: Trained, digits: ImageDataset) -> None:
    full = rws.extract(trained.clean, trained.tuned)
    p = rws.extract(trained.clean, trained.tuned, alpha="auto", layers="auto", data=_val(digits),
                    **FAST)  # fmt: skip
    op = p.provenance["operating_point"]
    n = len(patch_layers(full))
    assert sorted(int(k) for k in op["by_layers"]) == layer_candidates(n)
    assert op["layers"] in layer_candidates(n)
    assert len(patch_layers(p)) == op["layers"]
    assert p.names() == full.names()[: len(p.names())]  # the shallowest ones
    best = max(op["by_layers"].values(), key=lambda pt: pt["corrupted"])
    assert op["curve"]["points"] and p.scale > 0
    chosen = next(pt for pt in op["curve"]["points"] if pt["alpha"] == p.scale)
    assert chosen["corrupted"] >= best["corrupted"]  # the refinement can only add


def test_apply_scale_auto(trained: Trained, digits: ImageDataset) -> None:
    patch = rws.extract(trained.clean, trained.tuned)
    chosen = rws.extract(trained.clean, trained.tuned, alpha="auto", data=_val(digits), **FAST)
    model = copy.deepcopy(trained.clean)
    rep = rws.apply(model, patch.replace(tags={"corruption": "gaussian_noise"}), scale="auto",
                    data=_val(digits), severity=(4, 4), grid=(0, 0.25, 0.5, 1))  # fmt: skip
    assert rep.operating_point["alpha"] == chosen.scale
    expected = copy.deepcopy(trained.clean)
    rws.apply(expected, patch, scale=chosen.scale)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 expected.state_dict().values(), strict=True))  # fmt: skip
    # a patch stored at the blind default α (no search at extraction) is searched over its full δ
    blind = patch.replace(scale=0.5, provenance={**patch.provenance, "alpha_default": True})
    again = copy.deepcopy(trained.clean)
    rep = rws.apply(again, blind.replace(tags={"corruption": "gaussian_noise"}), scale="auto",
                    data=_val(digits), severity=(4, 4), grid=(0, 0.25, 0.5, 1))  # fmt: skip
    assert rep.operating_point["alpha"] == chosen.scale
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(),
                                                 expected.state_dict().values(), strict=True))  # fmt: skip
    with pytest.raises(UsageError, match="one patch"):
        rws.apply(model, patch, patch, scale="auto", data=_val(digits))
    with pytest.raises(UsageError, match="name the corruptions"):
        rws.apply(model, patch, scale="auto", data=_val(digits))  # untagged, no corruptions=


def test_bad_validation_data(trained: Trained, digits: ImageDataset, tmp_path: Path) -> None:
    x, y = _val(digits)
    with pytest.raises(UsageError, match="needs validation data"):
        rws.extract(trained.clean, trained.tuned, alpha="auto", **FAST)
    with pytest.raises(UsageError, match=r"49 examples are too few.*at least 50"):
        validation_split((x[:49], y[:49]))
    with pytest.raises(UsageError, match=r"labels run 0…12 but the model has 10 outputs"):
        rws.extract(trained.clean, trained.tuned, alpha="auto", data=(x, y.clamp(max=9) + (y == 9) * 3),
                    **FAST)  # fmt: skip
    with pytest.raises(UsageError, match="expected 150 integer labels"):
        validation_split((x, y[:10]))
    with pytest.raises(UsageError, match="needs the architecture"):
        rws.extract(trained.clean_path, trained.tuned_path, alpha="auto", data=(x, y), **FAST)
    with pytest.raises(UsageError, match="go with alpha='auto'"):
        rws.extract(trained.clean, trained.tuned, data=(x, y))
    assert len(validation_split(Split(x[:50], y[:50]))) == 50


def test_cli_extract_auto_and_bad_input(trained: Trained, tmp_path: Path) -> None:
    c, t = trained.clean_path, trained.tuned_path
    out = tmp_path / "p.safetensors"
    code, stdout, err = run("extract", c, t, "-o", out, "--alpha", "auto", "--data", "digits",
                            "--arch", "small-cnn", "--corruptions", "gaussian_noise",
                            "--max-clean-drop", "1", "--plot", tmp_path / "op.png")  # fmt: skip
    assert code == 0, err
    p = rws.load(out)
    assert "operating point: α = " in stdout and f"α = {p.scale:g}" in stdout
    assert (tmp_path / "op.png").stat().st_size > 1000
    assert p.provenance["operating_point"]["data"]["n_examples"] == len(rws.data.load_digits().val)
    code, _, err = run("extract", c, t, "-o", tmp_path / "q.safetensors")
    assert code == 0 and "no operating-point search" in err
    code, _, err = run("extract", c, t, "-o", tmp_path / "r.safetensors", "--alpha", "auto",
                       "--data", "digits", "--arch", "small-cnn")  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and "name the corruptions" in err
    assert not (tmp_path / "r.safetensors").exists()
