"""Figure 3 of issue 2: apply → remove restores every element to within one float32 rounding, and
bit for bit wherever the delta is exactly representable on the weight's grid."""

from __future__ import annotations

import pytest
import torch

from rws.patching.arith import add_delta, exact_delta, patch_run, sub_delta
from tests.conftest import within_one_rounding


@pytest.mark.parametrize("rel", [1e-3, 1e-2, 0.1, 1.0])
def test_roundtrip_within_one_rounding_and_mostly_exact(rel: float) -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(200_000, generator=g) * 0.05
    d = torch.randn(200_000, generator=g) * 0.05 * rel
    wp = add_delta(w, d)
    back = sub_delta(wp, d)
    assert within_one_rounding(back, w, wp)
    exact = float((back == w).float().mean())
    # measured: 0.996 / 0.973 / 0.880 / 0.626: the bits rounding drops when |w + d| moves to a
    # coarser binade are gone, whatever the inverse
    assert exact > {1e-3: 0.99, 1e-2: 0.96, 0.1: 0.86, 1.0: 0.6}[rel]


def test_representable_deltas_roundtrip_bit_for_bit() -> None:
    g = torch.Generator().manual_seed(1)
    w = torch.randint(-4096, 4096, (100_000,), generator=g).float() / 1024
    d = torch.randint(-512, 512, (100_000,), generator=g).float() / 1024
    assert torch.equal(sub_delta(add_delta(w, d), d), w)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_exact_delta_reproduces_a_single_step_update(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(2)
    base = torch.randn(10_000, generator=g).to(dtype)
    base = base[base.abs() > 0.1]  # within 2× of the update: Sterbenz makes tuned − base exact
    tuned = (base.double() + 0.01 * torch.randn(base.shape, generator=g).double()).to(dtype)
    assert torch.equal(add_delta(base, exact_delta(base, tuned)), tuned)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("codec", ["int8", "fp16", "bf16", "fp32"])
def test_patch_run_is_the_whole_tensor_arithmetic_bit_for_bit(
    codec: str, dtype: torch.dtype
) -> None:
    """Run by run, in runs that end mid-tensor, at the last (partial) int8 block and past the last
    whole run, patch_run gives what ops.total_delta + add_delta/sub_delta give on the tensor."""
    from rws.patching.codecs import range_decoder
    from rws.patching.ops import total_delta
    from rws.patching.patch import Patch, encode_deltas

    g = torch.Generator().manual_seed(3)
    n, run = 16 * 41 + 5, 16 * 7  # 41 whole blocks of 16 and a partial one; runs of 7 blocks
    w = (torch.randn(n, generator=g) * 2).to(dtype)
    patches = []
    for i in range(2):
        d = torch.randn(n, generator=g) * 0.1
        tensors, _ = encode_deltas([("x", d, w)], codec=codec, blocksize=16)
        patches.append((Patch(tensors=tensors, scale=0.5 + i), 1.0 if i else -0.7))
    for k in (1, 2):
        parts = [(p, a * p.scale) for p, a in patches[:k]]
        deltas = []
        for p, a in parts:
            dec = range_decoder("x", p.tensors["x"].encoded, (n,))
            assert dec is not None and run % dec.align == 0
            deltas.append((dec.decode_into, a))
        for inverse in (False, True):
            f = sub_delta if inverse else add_delta
            want = f(w, total_delta("x", parts, dtype), inplace=True)
            got, acc, tmp = w.clone(), torch.empty(run), torch.empty(run)
            for start in range(0, n, run):
                assert patch_run(got[start : start + run], start, deltas, acc, tmp, inverse=inverse)
            assert got.dtype == want.dtype and torch.equal(_bits(got), _bits(want))


def test_patch_run_reports_non_finite_results() -> None:
    w = torch.tensor([65000.0, 1.0], dtype=torch.float16)
    d = torch.tensor([1000.0, 0.0])

    def decode_into(start: int, out: torch.Tensor) -> None:
        out.copy_(d[start : start + out.numel()])

    assert not patch_run(w.clone(), 0, [(decode_into, 1.0)], torch.empty(2))  # overflows to inf
    assert patch_run(w.clone(), 0, [(decode_into, -1.0)], torch.empty(2))
