"""rws.recipes.alpha: the α selection rule, its settings and the measured curve."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import rws
from rws.data import ImageDataset, Split
from rws.errors import UsageError
from rws.recipes.alpha import AlphaPoint, AlphaSettings, alpha_curve, choose_alpha, parse_criterion
from rws.robustness.inputs import corrupted_inputs
from tests.conftest import Trained


def test_choose_alpha_rule() -> None:
    pts = [AlphaPoint(0.0, 0.80, 0.60, 0.50), AlphaPoint(0.5, 0.85, 0.62, 0.50),
           AlphaPoint(0.8, 0.90, 0.65, 0.49), AlphaPoint(1.0, 0.90, 0.66, 0.40)]  # fmt: skip
    assert choose_alpha(pts, {"clean": 1}, 0.1).alpha == 0.5  # 0.8 loses a robust point
    assert choose_alpha(pts, {"clean": 1}, 2).alpha == 0.8  # tie with 1.0: the smaller α
    assert choose_alpha(pts, {"clean": 1}, None).alpha == 0.8
    assert choose_alpha(pts, {"corrupted": 1}, None).alpha == 1.0
    assert choose_alpha(pts, {"robust": 1}, None).alpha == 0.0
    assert choose_alpha(pts, parse_criterion("clean=1,corrupted=0.5"), 2).alpha == 0.8
    assert parse_criterion("clean+corrupted") == {"clean": 1.0, "corrupted": 1.0}
    for bad in ("accuracy", "clean=x", "clean=0"):
        with pytest.raises(UsageError):
            parse_criterion(bad)
    with pytest.raises(UsageError, match="corrupted"):
        AlphaSettings(criterion="corrupted")


def test_settings_are_normalised_and_checked() -> None:
    s = AlphaSettings(
        grid=(1.0, 0.5, 1), severity=3, corruptions=["fog"], criterion="clean+corrupted"
    )
    assert s.grid == (0.0, 0.5, 1.0) and s.severity == (3, 3) and s.corruptions == ("fog",)
    assert s.criterion == {"clean": 1.0, "corrupted": 1.0}
    for bad, what in (
        ({"severity": (0, 5)}, "severity must be 1–5"),
        ({"severity": (4, 2)}, "severity must be 1–5"),
        ({"grid": (float("nan"),)}, "finite"),
        ({"max_robust_drop": -0.1}, "max_robust_drop"),
        ({"criterion": "robust", "attack_steps": 0}, "attack is off"),
    ):
        with pytest.raises(UsageError, match=what):
            AlphaSettings(**bad)


def test_alpha_curve_measures_each_alpha_and_restores_the_model(
    trained: Trained, digits: ImageDataset
) -> None:
    model = copy.deepcopy(trained.clean)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    patch = rws.extract(trained.clean, trained.tuned) * 2.0  # patch.scale multiplies every α
    split = Split(digits.val.x[:96], digits.val.y[:96])
    s = AlphaSettings(grid=(0.5,), corruptions=("gaussian_noise",), severity=(2, 3),
                      attack_steps=0, batch_size=32, seed=1, refine=0, copy="cycled")  # fmt: skip
    curve = alpha_curve(model, patch, split, s)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [p.alpha for p in curve.points] == [0.0, 0.5] and curve.n_examples == 96
    tuned = trained.tuned.eval()
    xc = corrupted_inputs(split.x, ["gaussian_noise"], (2, 3), seed=1, batch_size=32)
    for m, point in ((trained.clean.eval(), curve.points[0]), (tuned, curve.points[1])):
        with torch.no_grad():  # α = 0.5 at scale 2 is the tuned model (up to float rounding)
            assert point.clean == pytest.approx(_acc(m, split.x, split.y), abs=1.5 / 96)
            assert point.corrupted == pytest.approx(_acc(m, xc, split.y), abs=1.5 / 96)
    assert curve.points[0].clean == _acc(trained.clean.eval(), split.x, split.y)  # exactly
    assert math.isnan(curve.points[0].robust) and curve.chosen in curve.points


def _acc(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return int((model(x).argmax(1) == y).sum()) / len(y)


def test_probe_worst_of_several_pgd_runs(trained: Trained, digits: ImageDataset) -> None:
    from rws.recipes.validation import Probe
    from rws.runtime.seed import derived_seed

    model = trained.clean.eval()
    split = Split(digits.val.x[:96], digits.val.y[:96])
    eps, step = 2 / 255, 2 / 225
    runs = [Probe(model, split, attack_eps=eps, attack_steps=2, attack_step_size=step,
                  attack_runs=k).measure().robust for k in (1, 3)]  # fmt: skip
    accs = []
    for seed in (0, derived_seed(0, "pgd-run", 1), derived_seed(0, "pgd-run", 2)):
        g = torch.Generator().manual_seed(seed)
        xa = rws.attack(model, split.x, split.y, "pgd", eps=eps, steps=2, step_size=step,
                        generator=g, batch_size=256)  # fmt: skip
        accs.append(_acc(model, xa, split.y))
    assert runs == [accs[0], min(accs)]  # run 0 is the single run; the worst of 3 is reported
    with pytest.raises(UsageError, match="attack_runs"):
        AlphaSettings(attack_runs=0)
