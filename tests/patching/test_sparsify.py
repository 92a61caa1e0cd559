"""Sparsified deltas (top-k, DARE): exact storage, file round trips, apply/remove, TIES compose."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import rws
from rws.errors import CodecError, UsageError
from rws.patching import codecs, sparsify
from rws.patching.encode import elect_signs


def _pair(seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    base = {
        "conv.weight": torch.randn(16, 8, 3, 3, generator=g),
        "bn.weight": 1 + 0.1 * torch.rand(16, generator=g),
        "bn.running_var": 1 + torch.rand(16, generator=g),
        "fc.weight": torch.randn(10, 64, generator=g),
    }
    tuned = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    return base, tuned


@pytest.mark.parametrize("density", [1.0, 0.5, 0.1, 0.002])
def test_positions_round_trip_exactly_in_the_smaller_form(density: float) -> None:
    n = 5000
    pos, _ = sparsify.select("w", torch.randn(n), "topk", density)
    packed = sparsify.pack_positions(pos, n)
    kind = "mask" if density >= 0.5 else "gaps"
    assert list(packed) == [kind] and packed[kind].dtype == torch.uint8
    assert packed[kind].numel() <= min(-(-n // 8), pos.numel() + n // 255 + 1)
    assert torch.equal(sparsify.unpack_positions("w", packed, n, pos.numel()), pos)
    far = torch.tensor([0, 300, 4999])  # gaps of 299 and 4698: escape bytes
    gaps = sparsify.pack_positions(far, 100_000)["gaps"]
    assert gaps.tolist()[:3] == [0, 255, 44]
    assert torch.equal(sparsify.unpack_positions("w", {"gaps": gaps}, 100_000), far)
    with pytest.raises(CodecError, match="sparse data holds 3 positions for 4000 elements"):
        sparsify.unpack_positions("w", {"gaps": gaps}, 4000)


def test_topk_keeps_the_largest_and_dare_rescales_a_seeded_draw() -> None:
    x = torch.tensor([0.1, -3.0, 0.5, 2.0, -0.2, 0.0, 1.0, -1.5])
    pos, val = sparsify.select("w", x, "topk", 0.5)
    assert pos.tolist() == [1, 3, 6, 7] and val.tolist() == [-3.0, 2.0, 1.0, -1.5]
    y = torch.randn(20_000, generator=torch.Generator().manual_seed(1))
    p1, v1 = sparsify.select("w", y, "dare", 0.25, seed=3)
    p2, v2 = sparsify.select("w", y, "dare", 0.25, seed=3)
    p3, _ = sparsify.select("w", y, "dare", 0.25, seed=4)
    assert torch.equal(p1, p2) and torch.equal(v1, v2) and not torch.equal(p1, p3)
    assert abs(p1.numel() / y.numel() - 0.25) < 0.01
    assert torch.equal(v1, y[p1] / 0.25)  # rescaled: unbiased in expectation
    for bad in (0, -0.1, 1.5, float("nan")):
        with pytest.raises(UsageError, match=r"must be in \(0, 1\]"):
            sparsify.check_density(bad)
    with pytest.raises(UsageError, match="choose one of: topk, dare"):
        sparsify.select("w", y, "magnitude", 0.5)


@pytest.mark.parametrize(
    ("codec", "method"),
    [("fp32", "topk"), ("fp32", "dare"), ("int8", "topk"), ("int8", "dare"), ("nf4", "topk")],
)
def test_sparse_encodings_decode_exactly_to_what_was_measured(
    codec: str, method: str, tmp_path: Path
) -> None:
    x = torch.randn(40, 50, generator=torch.Generator().manual_seed(2))
    enc = codecs.encode("w", x, codec, sparsify=method, density=0.2, seed=7)
    back = codecs.decode("w", enc, (40, 50))
    assert torch.equal(back, codecs.decode("w", enc, (40, 50)))
    err = float((back - x).norm() / x.norm())
    assert enc.params["rel_error"] == pytest.approx(err, rel=5e-3)
    kept = int((back != 0).sum())
    assert kept <= 0.25 * x.numel() and enc.params["sparse"] == method
    save_file({k or "v": t for k, t in enc.tensors.items()}, tmp_path / "p.safetensors")
    with safe_open(tmp_path / "p.safetensors", "pt") as f:  # plain tensors, no pickle
        assert {f.get_tensor(k).dtype for k in f.keys()} <= {  # noqa: SIM118
            torch.uint8, torch.int8, torch.float32, torch.float16
        }  # fmt: skip
    if method == "topk" and codec == "fp32":  # lossless values: exactly the largest elements
        top = x.abs().reshape(-1).topk(400).indices
        assert torch.equal(back.reshape(-1)[top], x.reshape(-1)[top])


def test_sparse_patches_work_through_files_apply_remove_and_streaming(tmp_path: Path) -> None:
    base, tuned = _pair()
    save_file(base, tmp_path / "base.safetensors")
    p = rws.extract(base, tuned, codec="int8", sparsify="topk", density=0.1)
    assert {n: t.encoded.params.get("sparse") for n, t in p.tensors.items()} == {
        "conv.weight": "topk", "bn.weight": None, "bn.running_var": None, "fc.weight": "topk"
    }  # fmt: skip
    assert p.provenance["sparsify"] == {"method": "topk", "density": 0.1, "seed": 0}
    p.save(tmp_path / "p.safetensors")
    q = rws.load(tmp_path / "p.safetensors")
    assert q.fingerprint() == p.fingerprint()
    assert all(torch.equal(q.delta(n), p.delta(n)) for n in p.names())
    res = rws.apply_file(tmp_path / "base.safetensors", [q], tmp_path / "a.safetensors")
    assert (res.report.exact, res.report.checked) == (4, 4)
    sd = {k: v.clone() for k, v in base.items()}
    rws.apply(sd, q)
    streamed = load_file(tmp_path / "a.safetensors")
    assert all(torch.equal(streamed[n], sd[n]) for n in base)
    rws.remove_file(tmp_path / "a.safetensors", [q], tmp_path / "r.safetensors")
    restored = load_file(tmp_path / "r.safetensors")
    assert all(torch.allclose(restored[n], base[n], atol=1e-6) for n in base)


def test_ties_elects_signs_and_averages_the_agreeing_terms() -> None:
    t = elect_signs([torch.tensor([1.0, -2.0, 0.0, 1.0]), torch.tensor([3.0, 1.0, 0.0, -1.0])])
    assert t.tolist() == [2.0, -2.0, 0.0, 0.0]  # the last: a tie, sign 0, nothing kept
    base, t1 = _pair(0)
    g = torch.Generator().manual_seed(5)
    t2 = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    p1, p2 = rws.extract(base, t1), rws.extract(base, t2)
    merged = rws.compose([(p1, 0.5), (p2, 2.0)], ties=True)
    d1, d2 = 0.5 * p1.delta("fc.weight"), 2.0 * p2.delta("fc.weight")
    elected = torch.sign(d1 + d2)
    n = (torch.sign(d1) == elected).float() + (torch.sign(d2) == elected).float()
    want = (d1 * (torch.sign(d1) == elected) + d2 * (torch.sign(d2) == elected)) / n
    assert torch.allclose(merged.delta("fc.weight"), want, atol=1e-7)
    assert merged.provenance["ties"] is True
    summed = rws.compose([p1, p2])
    assert torch.allclose(summed.delta("fc.weight"), p1.delta("fc.weight") + p2.delta("fc.weight"))
