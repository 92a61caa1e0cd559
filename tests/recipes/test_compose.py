"""Searched composition: per-patch coefficients chosen on validation data under a clean budget."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import rws
from rws.data import ImageDataset
from rws.errors import UsageError
from tests.conftest import Trained, run, train

FAST = {"severity": (4, 4), "grid": (0, 0.1, 0.2, 0.4)}


@pytest.fixture(scope="session")
def two_signatures(trained: Trained, digits: ImageDataset) -> list[rws.Patch]:
    """The conftest's noise fine-tune and a contrast fine-tune of the same clean CNN, as patches
    tagged with their corruption."""
    g = torch.Generator().manual_seed(3)
    xc = rws.corrupt(digits.train.x, "contrast", 4, generator=g)
    contrast = train(copy.deepcopy(trained.clean), xc, digits.train.y, epochs=2, lr=1e-3, seed=2)
    noise = rws.extract(trained.clean, trained.tuned, name="noise",
                        tags={"corruption": "gaussian_noise"})  # fmt: skip
    return [noise, rws.extract(trained.clean, contrast, name="contrast",
                               tags={"corruption": "contrast"})]  # fmt: skip


def test_search_beats_uniform_and_singles_within_budget(
    trained: Trained, digits: ImageDataset, two_signatures: list[rws.Patch]
) -> None:
    val = (digits.val.x[:150], digits.val.y[:150])
    before = {k: v.clone() for k, v in trained.clean.state_dict().items()}
    both = rws.compose(two_signatures, search=True, model=trained.clean, data=val,
                       max_clean_drop=1.0, **FAST)  # fmt: skip
    assert all(torch.equal(before[k], v) for k, v in trained.clean.state_dict().items())
    res = both.provenance["composition_search"]
    assert res["corruptions"] == ["gaussian_noise", "contrast"] and res["budget_met"]
    chosen, base = res["chosen"], res["base"]
    assert chosen["clean"] >= base["clean"] - 0.01 - 1e-9
    ok = [p for p in (res["uniform"], *res["singles"]) if p["clean"] >= base["clean"] - 0.01 - 1e-9]
    assert all(chosen["corrupted"] >= p["corrupted"] for p in ok)
    assert chosen["corrupted"] > base["corrupted"] + 0.05
    # the stored patch is Σ ck·Pk at the chosen coefficients
    c = res["coefficients"]
    ref = rws.compose([(p, a) for p, a in zip(two_signatures, c, strict=True) if a])
    for n in ref.names():
        assert torch.equal(both.delta(n), ref.delta(n))
    # the same choice on two threads
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        again = rws.compose(two_signatures, search=True, model=trained.clean, data=val,
                            max_clean_drop=1.0, **FAST)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert again.provenance["composition_search"]["coefficients"] == c


def test_compose_search_bad_input(
    trained: Trained, digits: ImageDataset, two_signatures: list[rws.Patch], tmp_path: Path
) -> None:
    val = (digits.val.x[:150], digits.val.y[:150])
    with pytest.raises(UsageError, match="at least two patches"):
        rws.compose(two_signatures[:1], search=True, model=trained.clean, data=val)
    with pytest.raises(UsageError, match="needs the model"):
        rws.compose(two_signatures, search=True, data=val)
    with pytest.raises(UsageError, match="needs validation data"):
        rws.compose(two_signatures, search=True, model=trained.clean)
    untagged = two_signatures[1].replace(tags={})
    with pytest.raises(UsageError, match="names no corruption"):
        rws.compose([two_signatures[0], untagged], search=True, model=trained.clean, data=val)
    with pytest.raises(UsageError, match="go with search=True"):
        rws.compose(two_signatures, data=val)
    files = []
    for p in two_signatures:
        p.save(tmp_path / f"{p.name}.safetensors")
        files.append(tmp_path / f"{p.name}.safetensors")
    code, _, err = run("compose", *files, "--search", "-o", tmp_path / "c.safetensors")
    assert code == 2 and err.count("\n") == 1 and "needs the model" in err
    code, _, err = run("compose", *files, "--data", "digits", "-o", tmp_path / "c.safetensors")
    assert code == 2 and "go with --search" in err
    assert not (tmp_path / "c.safetensors").exists()


def test_points_that_cannot_be_applied_are_never_chosen(
    trained: Trained, digits: ImageDataset
) -> None:
    """Two BN patches that each keep the running variance positive but not both at full weight:
    that point measures as NaN (model untouched) and no search rule accepts it."""
    from rws.recipes.alpha import AlphaPoint, feasible
    from rws.recipes.validation import Probe, validation_split

    sd = {k: v.clone() for k, v in trained.clean.state_dict().items()}
    var = next(k for k in sd if k.endswith("running_var"))
    a = rws.extract(sd, {**sd, var: sd[var] * 0.4}, codec="fp32", name="a")  # var·(1 − 0.6·c)
    probe = Probe(trained.clean, validation_split((digits.val.x[:60], digits.val.y[:60])),
                  corruptions=["fog"], severity=(3, 3))  # fmt: skip
    alone, both = probe.measure((a, 1.0)), probe.measure((a, 1.0), (a, 1.0))
    assert alone.clean == alone.clean and both.clean != both.clean  # NaN: not measurable
    assert all(torch.equal(v, sd[k]) for k, v in trained.clean.state_dict().items())
    base = AlphaPoint(0.0, 1.0, 0.5, float("nan"))
    nan = AlphaPoint(2.0, both.clean, both.corrupted, both.robust)
    assert not feasible(nan, base, None, None) and not feasible(nan, base, 1.0, None)
