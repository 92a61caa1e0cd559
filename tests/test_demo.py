"""`rws demo` end to end on a reduced configuration (2 corruptions, short training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import rws
from rws.cli import app
from rws.demo import DemoConfig, run_demo

CFG = DemoConfig(corruptions=("gaussian_noise", "fog"), alphas=(0.5, 1.0))  # default training


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, rws.Report]:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, CFG).report


def _mean(v: rws.robustness.report.Variant, c: str) -> float:
    return sum(v.corruptions[c].values()) / len(v.corruptions[c])


def test_demo_writes_everything_and_signatures_help(demo: tuple[Path, rws.Report]) -> None:
    out, report = demo
    names = [v.name for v in report.variants]
    assert names[0] == "base" and "gaussian_noise.rws" in names and "fog.rws-int8" in names
    assert "gaussian_noise.rws@0.5" in names and names[-1].startswith("all.rws")
    for f in ("report.json", "report.csv", "report.png", "origin.safetensors", "clean.safetensors"):
        assert (out / f).stat().st_size > 0, f
    saved = json.loads((out / "report.json").read_text())
    assert [v["name"] for v in saved["variants"]] == names
    base = report.base
    for k in CFG.corruptions:
        sig = rws.load(out / "signatures" / f"{k}.rws.safetensors")
        assert sig.kind == "rws" and sig.tags["corruption"] == k and sig.provenance["projection"]
        assert {t.encoded.codec for t in sig.tensors.values()} == {"int8"}
        rws_v, robust_v = report.variant(f"{k}.rws"), report.variant(f"{k}.robust-model")
        assert _mean(robust_v, k) > _mean(base, k) + 0.05  # the robust model is robust
        assert _mean(rws_v, k) > _mean(base, k) + 0.05  # clean + its signature recovers much of it
        q = report.variant(f"{k}.rws-int8")
        assert abs(_mean(q, k) - _mean(rws_v, k)) < 0.03  # int8 loses almost nothing


def test_second_run_reuses_checkpoints_and_reproduces(demo: tuple[Path, rws.Report]) -> None:
    out, report = demo
    again = run_demo(out, CFG)
    assert sorted(again.cached) == sorted(
        ["origin.safetensors", "clean.safetensors"]
        + [f"robust-{k}.safetensors" for k in CFG.corruptions]
    )
    assert again.report.to_dict()["variants"] == report.to_dict()["variants"]


def test_cli_demo_and_bad_corruption(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["demo", "--out", str(tmp_path), "--corruptions", "fogg"])
    assert res.exit_code == 2 and res.stderr.strip().startswith("error: unknown corruption 'fogg'")
    assert not (tmp_path / "origin.safetensors").exists()
