"""``rws list``: every registry, name and summary from its entries, as a table or JSON."""

from __future__ import annotations

import json

import pytest

from rws.cli.listing import REGISTRIES
from rws.methods import list_methods
from rws.models import list_models
from rws.patching.codecs import list_codecs
from rws.robustness.attacks import list_attacks
from rws.robustness.corruptions import list_corruptions
from tests.cli.conftest import run

LISTS = {
    "codecs": list_codecs,
    "methods": list_methods,
    "models": list_models,
    "attacks": list_attacks,
    "corruptions": list_corruptions,
}


@pytest.mark.parametrize("kind", list(LISTS))
def test_list_shows_every_registered_name_with_its_summary(kind: str) -> None:
    code, out, _ = run("list", kind, "--json")
    rows = json.loads(out)
    assert code == 0 and [r["name"] for r in rows] == LISTS[kind]()
    registry = REGISTRIES[kind]
    assert all(r["summary"] == registry.entry(r["name"]).summary for r in rows)
    code, out, _ = run("list", kind)
    assert code == 0 and all(name in out for name in LISTS[kind]())


def test_list_attacks_and_corruptions_tables() -> None:
    code, out, _ = run("list", "attacks")
    assert code == 0 and "autoattack-lite" in out and "pgd" in out
    code, out, _ = run("list", "corruptions")
    assert code == 0 and "gaussian_noise" in out and "speckle_noise" in out


def test_list_filters_by_glob_and_refuses_an_unknown_registry() -> None:
    code, out, _ = run("list", "corruptions", "*blur", "--json")
    names = [r["name"] for r in json.loads(out)]
    assert code == 0 and names == list_corruptions("*blur") and "fog" not in names
    assert run("list")[0] == 0  # codecs by default
    code, out, err = run("list", "losses")
    assert code == 2 and out == ""
    assert err.strip() == (
        "error: unknown registry 'losses'; choose one of: attacks, codecs, corruptions, methods, "
        "models"
    )


def test_methods_list_no_longer_holds_rift() -> None:
    code, out, _ = run("list", "methods", "--json")
    assert code == 0 and [r["name"] for r in json.loads(out)] == ["delta", "interpolation", "rws"]
