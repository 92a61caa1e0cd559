"""``rws extract --shallow`` on files whose names were sorted: the guess is said, ``--order-from``
(an arch or a file), ``--arch`` and a recorded arch give the computation's order (issue 14)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import rws
from rws.models import create_model
from tests.cli.conftest import run
from tests.patching.test_order import SortedAgainst, shifted, sorted_files

TOY = "tests.patching.test_order:sorted_toy"


@pytest.fixture()
def toy(tmp_path: Path) -> tuple[Path, Path]:
    return sorted_files(SortedAgainst(), tmp_path)


def _extract(clean: Path, tuned: Path, *extra: str) -> tuple[int, str, dict]:
    out = clean.parent / "p.safetensors"
    code, _, err = run("extract", clean, tuned, "-o", out, "--shallow", "2", *extra)
    selection = rws.load(out).provenance["selection"] if code == 0 else {}
    return code, err, selection


def test_guessed_order_is_said_and_order_from_fixes_it(toy: tuple[Path, Path]) -> None:
    clean, tuned = toy
    code, err, selection = _extract(clean, tuned)
    assert code == 0 and selection["layers"] == ["alpha", "mid"]
    assert selection["order"]["source"] == "guessed from names"
    assert "note: the layer order was guessed from the tensor names" in " ".join(err.split())
    code, err, selection = _extract(clean, tuned, "--order-from", TOY)
    assert code == 0 and selection["layers"] == ["zeta", "mid"] and "guessed" not in err
    assert selection["order"]["source"] == f"forward pass of {TOY}"
    names = ["zeta.weight", "zeta.bias", "mid.weight", "mid.bias", "alpha.weight"]
    (clean.parent / "names.json").write_text(json.dumps(names))
    code, _, selection = _extract(clean, tuned, "--order-from", clean.parent / "names.json")
    assert code == 0 and selection["layers"] == ["zeta", "mid"]
    assert selection["order"]["source"] == "name list names.json"
    assert "mid_bn.weight" in selection["order"]["unplaced"]  # not in the list: kept last


def test_arch_and_a_recorded_arch_give_the_forward_order(toy: tuple[Path, Path]) -> None:
    clean, tuned = toy
    code, err, selection = _extract(clean, tuned, "--arch", TOY)
    assert code == 0 and selection["layers"] == ["zeta", "mid"] and "guessed" not in err
    meta = {"rws.finetune": json.dumps({"arch": TOY, "data": "digits"})}
    save_file(shifted(SortedAgainst(), seed=2), tuned, metadata=meta)
    code, err, selection = _extract(clean, tuned)
    assert code == 0 and selection["layers"] == ["zeta", "mid"] and "guessed" not in err
    assert (
        selection["order"]["source"]
        == f"forward pass of {TOY} (the arch tuned.safetensors records)"
    )


def test_a_registered_arch_on_sorted_files(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("small-cnn")
    clean, tuned = sorted_files(model, tmp_path)
    code, _, selection = _extract(clean, tuned, "--order-from", "small-cnn")
    assert code == 0 and selection["layers"] == ["conv1", "conv2"]
    assert selection["order"] == {"source": "forward pass of small-cnn", "count": 4}


def test_bad_order_from_is_one_line_and_writes_nothing(toy: tuple[Path, Path]) -> None:
    clean, tuned = toy
    code, _, err = run("extract", clean, tuned, "-o", clean.parent / "p.safetensors",
                       "--shallow", "2", "--order-from", "no-such-arch")  # fmt: skip
    assert code == 2 and "unknown model 'no-such-arch'" in err
    code, _, err = run("extract", clean, tuned, "-o", clean.parent / "p.safetensors",
                       "--shallow", "2", "--order-from", "missing.json")  # fmt: skip
    assert code != 0 and "missing.json: no such file" in err
    code, _, err = run("extract", clean, tuned, "-o", clean.parent / "p.safetensors",
                       "--shallow", "2", "--order-from", "small-cnn")  # fmt: skip
    assert code == 2 and "none of its tensor names is in" in err
    assert not (clean.parent / "p.safetensors").exists()
