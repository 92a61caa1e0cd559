"""Which corruption kernels follow the reference and which approximate it, said everywhere a
number goes: the registry, `rws list corruptions`, the report settings, the CSV and the card."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch
from typer.testing import CliRunner

import rws
from rws.cli.app import app
from rws.data import load_digits
from rws.hub.card import model_card
from rws.models import create_model
from rws.robustness.corruptions import corruption_info, kernel_fidelity, list_corruptions


def test_registry_labels_the_approximate_kernels() -> None:
    approx = {c for c in list_corruptions() if kernel_fidelity(c) == "approximate"}
    assert approx == {"frost", "motion_blur", "snow"}
    assert "photographs" in corruption_info("frost")["approximate"]
    assert kernel_fidelity("fog") == "reference" and corruption_info("fog")["approximate"] == ""


def test_report_csv_and_card_say_which_kernel_ran(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("small-cnn").eval()
    test = load_digits().test
    x, y = test.x[:40], test.y[:40]
    patch = rws.extract(model.state_dict(), {k: v + 0.01 if v.is_floating_point() else v
                                             for k, v in model.state_dict().items()}, name="p")  # fmt: skip
    rep = rws.evaluate(model, (x, y), corruptions=["fog", "frost"], severities=[1],
                       patches=[patch], device="cpu")  # fmt: skip
    assert rep.settings["kernels"] == {"fog": "reference", "frost": "approximate"}
    rep.save_csv(tmp_path / "r.csv")
    with open(tmp_path / "r.csv", newline="") as fh:
        rows = {(r["variant"], r["metric"]): r["kernel"] for r in csv.DictReader(fh)}
    assert rows[("p", "corruption/frost/1")] == "approximate"
    assert rows[("p", "corruption/fog")] == "reference" and rows[("p", "clean")] == ""
    card = model_card([("p.safetensors", patch)], "org/p", report=rep)
    assert "approximate kernels (not comparable with CIFAR-10-C numbers): frost" in card


def test_list_corruptions_shows_the_kernel() -> None:
    res = CliRunner().invoke(app, ["list", "corruptions", "frost", "--json"])
    assert res.exit_code == 0
    (entry,) = json.loads(res.stdout)
    assert entry["kernel"].startswith("approximate: a procedural frost texture")
