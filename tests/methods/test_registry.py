"""The method registry: get/list, options dataclasses built and checked in the library, patch
kinds registered with the format, and the delta the built-in methods take."""

from __future__ import annotations

import re

import pytest
import torch

import rws
from rws.errors import UnknownNameError, UsageError
from rws.io.checkpoint import open_checkpoint
from rws.methods import (
    METHODS,
    InterpolationOptions,
    NoOptions,
    RwsOptions,
    get_method,
    list_methods,
    method_options,
)
from rws.methods.extract import extract as extract_patch
from rws.patching.codecs import get_codec, list_codecs
from rws.patching.format import list_kinds
from rws.patching.patch import Patch

BASE = {"w": torch.tensor([1.0, 2.0, -3.0]), "b": torch.tensor([0.5])}
TUNED = {"w": torch.tensor([1.5, 1.0, -2.0]), "b": torch.tensor([0.5])}


def test_get_and_list_methods() -> None:
    assert list_methods() == ["delta", "interpolation", "rws"]
    assert list_methods("*n") == ["interpolation"]
    m = get_method("rws")
    assert m.name == "rws" and m.kind == "rws" and m.options is RwsOptions
    assert METHODS.entry("rws").url.startswith("https://arxiv.org/")
    with pytest.raises(UnknownNameError, match="unknown method 'rift'; choose one of: delta"):
        get_method("rift")


@pytest.mark.parametrize("name", list_methods())
def test_every_method_kind_is_a_registered_patch_kind(name: str) -> None:
    assert get_method(name).kind in list_kinds()


def test_rift_is_a_recipe_not_a_method() -> None:
    with pytest.raises(UnknownNameError, match="unknown method 'rift'"):
        rws.extract(BASE, TUNED, method="rift")


def test_options_dataclasses_are_frozen_and_validated() -> None:
    opts = RwsOptions(origin=BASE, robust=TUNED)
    assert opts.robust == (TUNED,) and opts.bn == "average" and opts.scale == 1.0
    with pytest.raises(AttributeError):
        opts.bn = "skip"  # type: ignore[misc]
    with pytest.raises(
        UsageError, match=r"--bn 'mean': choose one of average, replace-all, delta, skip"
    ):
        RwsOptions(bn="mean")  # type: ignore[arg-type]
    assert InterpolationOptions("0.5").alpha == 0.5 and InterpolationOptions(2).scale == 2.0
    assert InterpolationOptions("auto").scale == 1.0 and InterpolationOptions().alpha is None
    for bad in ("x", "nan", True, [1]):
        with pytest.raises(UsageError, match="give a number or auto"):
            InterpolationOptions(bad)  # type: ignore[arg-type]
    assert NoOptions().scale == 1.0


def test_method_options_from_raw_values() -> None:
    given = {"origin": None, "robust": [], "bn": None, "alpha": None}
    assert method_options("delta", given) == NoOptions()
    assert method_options("rws", {**given, "bn": "skip", "robust": ["r.safetensors"]}) == (
        RwsOptions(robust=("r.safetensors",), bn="skip")
    )
    assert method_options("interpolation", {**given, "alpha": "auto"}).alpha == "auto"
    cases = [
        ("delta", {"origin": "w0"}, "--origin needs --method rws (not --method delta)"),
        ("interpolation", {"robust": ["a"]}, "more than one TUNED checkpoint needs --method rws"),
        ("rws", {"alpha": "1"}, "--alpha A|auto needs --method interpolation (not --method rws)"),
        ("interpolation", {}, "--method interpolation needs --alpha A|auto"),
        ("delta", {"nope": 1}, "nope needs another method (not --method delta)"),
    ]
    for method, raw, message in cases:
        with pytest.raises(UsageError, match=re.escape(message)):
            method_options(method, raw)


def test_extract_takes_options_or_keywords_not_both() -> None:
    a = rws.extract(BASE, TUNED, method="rws", bn="skip")
    b = rws.extract(BASE, TUNED, method="rws", options=RwsOptions(bn="skip"))
    assert a.provenance["bn"] == b.provenance["bn"] == "skip"
    with pytest.raises(UsageError, match="not both"):
        rws.extract(BASE, TUNED, method="rws", options=RwsOptions(), bn="skip")
    with pytest.raises(UsageError, match="method 'rws' takes RwsOptions, not InterpolationOptions"):
        rws.extract(BASE, TUNED, method="rws", options=InterpolationOptions(1.0))
    with pytest.raises(UsageError, match=r"method 'delta' takes no options \(got origin\)"):
        rws.extract(BASE, TUNED, origin=BASE)
    with pytest.raises(UsageError, match=r"method 'interpolation' takes alpha \(got bn\)"):
        rws.extract(BASE, TUNED, method="interpolation", bn="skip")


def test_interpolation_with_a_number_is_the_delta_at_scale_alpha() -> None:
    p = rws.extract(BASE, TUNED, method="interpolation", alpha=0.25)
    d = rws.extract(BASE, TUNED)
    assert isinstance(p, Patch) and p.kind == "interpolation" and p.scale == 0.25
    assert p.provenance["alpha"] == 0.25 and "alpha" not in d.provenance
    assert torch.equal(p.delta("w", scaled=False), d.delta("w", scaled=False))
    assert rws.extract(BASE, TUNED, method="interpolation").scale == 1.0
    with pytest.raises(UsageError, match="alpha='auto' is chosen on validation data"):
        extract_patch(BASE, TUNED, method="interpolation", alpha="auto")  # the method alone
    with pytest.raises(UsageError, match="needs validation data"):  # the facade searches
        rws.extract(BASE, TUNED, method="interpolation", alpha="auto")


@pytest.mark.parametrize("codec", list_codecs())
def test_blocksize_is_recorded_for_blockwise_codecs_only(codec: str) -> None:
    if codec in ("bnb8", "nf4", "fp4"):
        pytest.importorskip("bitsandbytes")
    base = {"w": torch.linspace(-1, 1, 256)}
    tuned = {"w": base["w"] + 0.01 * torch.linspace(1, 2, 256)}
    try:
        p = rws.extract(base, tuned, codec=codec, blocksize=64)
    except rws.RwsError as e:  # a codec whose backend is not usable on this machine
        pytest.skip(str(e))
    assert p.provenance.get("blocksize") == (64 if get_codec(codec).blockwise else None)


def test_delta_is_exact_within_a_factor_of_two_as_documented() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.rand(10_000, generator=g) + 0.5
    near = w * (0.6 + 0.8 * torch.rand(10_000, generator=g))  # within a factor of two of w
    far = w * 1e-4 + 3.0 * torch.rand(10_000, generator=g)  # mostly not
    delta_of, _ = get_method("delta").prepare(
        open_checkpoint({"w": w}), open_checkpoint({"w": near}), NoOptions()
    )
    assert torch.equal(w + delta_of("w"), near)  # Sterbenz: exact, applied bit for bit
    delta_of, _ = get_method("delta").prepare(
        open_checkpoint({"w": w}), open_checkpoint({"w": far}), NoOptions()
    )
    applied = w + delta_of("w")
    assert not torch.equal(applied, far)  # outside Sterbenz's range a rounding can show …
    ulp = torch.finfo(torch.float32).eps * torch.maximum(w, far)
    assert bool(((applied - far).abs() <= ulp).all())  # … but only the two roundings
