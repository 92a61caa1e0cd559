"""Convergence checks (``rws eval --checks``): thresholds, a normal model passes, masked models are
flagged, and the CLI writes the measured section into report.json."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from rws.errors import UsageError
from rws.models import create_model
from rws.robustness.attacks import check_gradient_masking
from rws.robustness.attacks import checks as checks_mod
from rws.robustness.attacks.checks import check_cells, convergence_checks
from rws.robustness.config import EvalConfig
from rws.robustness.report import Report
from rws.runtime.seed import derived_seed
from tests.robustness.conftest import hand_report
from tests.robustness.test_evaluate import trained_models
from tests.robustness.test_report import BASE_ARGS, _run, files  # noqa: F401 (fixture)


def _shatter(x: torch.Tensor) -> torch.Tensor:
    """Changes x by at most 3e-4 but multiplies its derivative by 1 + 3·cos(1e4·x): the gradient's
    sign is scrambled pixel by pixel (shattered gradients, Athalye et al. 2018); none is zero."""
    return x + 3.0 * torch.sin(1e4 * x) / 1e4


def shattered_cnn(num_classes: int = 10) -> nn.Module:
    """small-cnn behind :func:`_shatter` (a ``--arch`` factory for the CLI test)."""
    model = create_model("small-cnn", num_classes=num_classes)
    model.register_forward_pre_hook(lambda _m, args: (_shatter(args[0]),))
    return model


class _Wrap(nn.Module):
    def __init__(self, inner: nn.Module, fn) -> None:
        super().__init__()
        self.inner, self.fn = inner, fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(self.fn(x))


@pytest.fixture(scope="module")
def digits():
    m = trained_models()
    return m.clean, m.data.test.x[:128], m.data.test.y[:128]


# --- thresholds, on scripted attack results -----------------------------------------------------


def _mask(n_true: int, shift: int = 0, n: int = 100) -> torch.Tensor:
    return torch.roll(torch.arange(n) < n_true, shift)


def _case(more: int = 40, e2: int = 20, e4: int = 4, b: int | tuple[int, int] = 40) -> dict:
    """(ε multiple, steps, seed tag) → examples left robust of 100 (base: 40 at ε, 10 steps);
    ``b`` as ``(n, shift)``: seed b's robust examples are seed a's, shifted by ``shift``."""
    return {(1, 10, "a"): 40, (1, 40, "a"): more, (2, 10, "a"): e2, (4, 10, "a"): e4,
            (1, 10, "b"): b}  # fmt: skip


@pytest.mark.parametrize(
    ("results", "flagged"),
    [
        (_case(more=38, b=(40, 2)), set()),  # 2 points: at the thresholds, not beyond
        (_case(more=37), {"more_steps"}),  # 4× the steps fool 3 points more
        (_case(more=42), {"more_steps"}),  # accuracy rises with more steps
        (_case(e2=42), {"eps_grid"}),  # accuracy rises with ε
        (_case(b=43), {"restarts"}),  # seeds 3 points apart
        (_case(b=(40, 3)), {"restarts"}),  # same accuracy, but together they fool 3 more
    ],
)
def test_thresholds(monkeypatch, results, flagged) -> None:
    eps = 0.1
    tags = {derived_seed(0, "checks", "pgd", t): t for t in "ab"}

    def fake(model, x, y, method, *, eps: float, steps: int, norm, generator):
        n = results[(round(eps / 0.1), steps, tags[generator.initial_seed()])]
        return _mask(*n) if isinstance(n, tuple) else _mask(n)

    monkeypatch.setattr(checks_mod, "_robust", fake)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    x, y = torch.rand(100, 3, 2, 2), torch.randint(0, 4, (100,))
    warnings, sec = convergence_checks(model, x, y, "pgd", eps=eps, steps=10)
    got = {k for k in ("more_steps", "eps_grid", "restarts") if sec[k]["flag"]}
    assert got == flagged, sec
    assert sec["more_steps"]["steps"] == [10, 40] and sec["more_steps"]["threshold"] == 0.02
    assert sec["eps_grid"]["eps"] == pytest.approx([0.1, 0.2, 0.4])
    a = results[(1, 10, "a")] / 100
    assert sec["more_steps"]["accuracy"][0] == sec["eps_grid"]["accuracy"][0] == a
    assert len(warnings) >= len(flagged)
    for line in warnings:
        assert "\n" not in line


# --- real models ---------------------------------------------------------------------------------


def test_normally_trained_model_passes(digits) -> None:
    model, x, y = digits
    # APGD-50 at 3/255 leaves 7 of 128 examples; 200 steps, another seed, 2ε: no change, 0
    warnings, sec = convergence_checks(model, x, y, "apgd", eps=3 / 255, steps=50)
    assert warnings == [], warnings
    ms, grid, r = sec["more_steps"], sec["eps_grid"], sec["restarts"]
    assert 0.03 < ms["accuracy"][0] < 0.5  # a radius where the attack has work to do
    assert abs(ms["drop"]) <= 0.02 and r["gap"] <= 0.02
    assert grid["accuracy"] == sorted(grid["accuracy"], reverse=True) and grid["accuracy"][2] < 0.1
    assert sec["large_eps"]["accuracy"] <= sec["large_eps"]["chance"]
    assert all(c.startswith("ok ") for c in check_cells(sec).values())


def test_shattered_gradients_pass_the_default_checks_but_not_these(digits) -> None:
    model, x, y = digits
    masked = _Wrap(model, _shatter)
    assert check_gradient_masking(masked, x, y) == []  # no zero gradient, no randomness …
    warnings, sec = convergence_checks(masked, x, y, "pgd", eps=8 / 255)
    ms = sec["more_steps"]
    # PGD-10 leaves ≈64 %, PGD-40 ≈79 % (PGD returns the last iterate of a scrambled walk)
    assert ms["flag"] and ms["accuracy"][1] > ms["accuracy"][0] + 0.05, ms
    assert any(w.startswith("robust accuracy rises with more steps") for w in warnings)
    assert sec["eps_grid"]["accuracy"][0] > 0.3  # the plain model is at 0 % here
    assert check_cells(sec)["check: 4× steps"].startswith("FLAG ")


def test_quantised_input_is_flagged_at_large_eps(digits) -> None:
    model, x, y = digits
    masked = _Wrap(model, lambda z: torch.round(z * 4) / 4)  # zero gradients
    warnings, sec = convergence_checks(masked, x, y, "pgd", eps=8 / 255, steps=5)
    large = sec["large_eps"]
    assert large["flag"] and large["accuracy"] > large["chance"], large
    assert any(w.startswith("large eps: PGD-20 at eps=0.5") for w in warnings)
    assert sec["more_steps"]["drop"] == 0.0  # nothing to converge: the gradient is zero


def test_config_needs_an_attack() -> None:
    with pytest.raises(UsageError, match="checks measure the attack"):
        EvalConfig(checks=True)
    with pytest.raises(UsageError, match="checks measure the attack"):
        EvalConfig(attack="pgd", checks=True, check_masking=False)
    cfg = EvalConfig(attack="pgd", checks=True)
    assert EvalConfig.from_dict(cfg.to_dict()) == cfg


def test_report_table_shows_the_section_and_old_reports_have_none() -> None:
    from rich.console import Console

    def text(r: Report) -> str:
        console = Console(width=200, record=True)
        console.print(r.table())
        return console.export_text()

    r = hand_report()
    assert "check:" not in text(r)
    sec = {"more_steps": {"steps": [10, 40], "accuracy": [0.5, 0.4], "flag": True},
           "restarts": {"accuracy": [0.5, 0.5], "flag": False}}  # fmt: skip
    r.settings["checks"] = {"base": sec, "fog@0.8": sec}
    again = Report.from_dict(json.loads(json.dumps(r.to_dict())))
    out = text(again)
    assert "check: 4× steps" in out and "FLAG 50.0% → 40.0%" in out and "ok 50.0%, 50.0%" in out


# --- the command ----------------------------------------------------------------------------------


def test_cli_checks_write_the_section(files) -> None:  # noqa: F811
    out = files / "checks.json"
    args = [*BASE_ARGS, "--weights", str(files / "clean.safetensors"), "--corruptions", "none",
            "--attack", "pgd", "--steps", "3", "--checks", "--out", str(out)]  # fmt: skip
    res = _run(args)
    assert res.exit_code == 0, res.output
    d = json.loads(out.read_text())
    sec = d["settings"]["checks"]["base"]
    assert d["settings"]["config"]["checks"] is True
    assert sec["attack"] == "pgd" and sec["examples"] == 64 and sec["steps"] == 3
    assert sec["more_steps"]["steps"] == [3, 12]
    for k in ("more_steps", "eps_grid", "large_eps", "restarts"):
        assert isinstance(sec[k]["flag"], bool), k
    assert "check: 4× steps" in res.stdout and "check: 2 seeds" in res.stdout
    assert Report.load_json(out).settings["checks"]["base"] == sec


def test_cli_strict_refuses_shattered_gradients(files) -> None:  # noqa: F811
    out = files / "shattered.json"
    args = ["--arch", "tests.robustness.test_checks:shattered_cnn", "--weights",
            str(files / "clean.safetensors"), "--data", "digits", "--n-examples", "64",
            "--corruptions", "none", "--attack", "pgd", "--device", "cpu", "--checks",
            "--strict", "--out", str(out)]  # fmt: skip
    res = _run(args)
    assert res.exit_code == 7, res.output
    line = res.stderr.strip()
    assert line.startswith("error: variant base: robust accuracy rises with more steps"), line
    assert line.endswith("evaluation refused (--strict)") and "\n" not in line
    assert not out.exists()
