"""rws.runtime.seed: derived seeds, seeded generators, forked global RNGs."""

from __future__ import annotations

import hashlib

import pytest
import torch

from rws.runtime.seed import derived_seed, forked_rng, generator


def _old_derived_seed(seed: int, tag: str) -> int:
    """The training module's former ``_derived_seed`` (the shipped signatures depend on it)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{tag}".encode()).digest()[:8], "little") >> 1


@pytest.mark.parametrize("seed", [0, 1, 7, 2**31 - 1, -3])
@pytest.mark.parametrize("tag", ["val", "train", "corrupt", "", "a/b"])
def test_derived_seed_equals_the_old_formula(seed: int, tag: str) -> None:
    assert derived_seed(seed, tag) == _old_derived_seed(seed, tag)


def test_derived_seed_known_values_and_range() -> None:
    assert derived_seed(0, "val") == _old_derived_seed(0, "val")
    assert derived_seed(0) == int.from_bytes(hashlib.sha256(b"0").digest()[:8], "little") >> 1
    assert derived_seed(1, "a", 2) == _old_derived_seed(1, "a/2")  # parts joined by "/"
    seeds = {derived_seed(s, t) for s in range(20) for t in ("val", "train")}
    assert len(seeds) == 40  # independent streams
    assert all(0 <= s < 2**63 for s in seeds)  # fits torch's manual_seed


def test_generator_is_seeded() -> None:
    g = generator(5)
    assert g.device == torch.device("cpu")
    assert torch.equal(torch.rand(4, generator=g), torch.rand(4, generator=torch.manual_seed(5)))


def test_forked_rng_seeds_and_restores_the_global_state() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    expected_next = torch.rand(3)
    torch.set_rng_state(before)
    with forked_rng(torch.device("cpu"), 7):
        inside = torch.rand(3)
    assert torch.equal(inside, torch.rand(3, generator=torch.Generator().manual_seed(7)))
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(torch.rand(3), expected_next)


def test_forked_rng_restores_on_error() -> None:
    before = torch.get_rng_state()
    with pytest.raises(RuntimeError, match="boom"), forked_rng(torch.device("cpu"), 1):
        torch.rand(10)
        raise RuntimeError("boom")
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_forked_rng_on_cuda() -> None:
    dev = torch.device("cuda")
    before_cpu, before_cuda = torch.get_rng_state(), torch.cuda.get_rng_state()
    with forked_rng(dev, 7):
        a = torch.rand(3, device=dev)
    with forked_rng(dev, 7):
        b = torch.rand(3, device=dev)
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), before_cpu)
    assert torch.equal(torch.cuda.get_rng_state(), before_cuda)
