from __future__ import annotations

import doctest
from dataclasses import FrozenInstanceError, replace
from pathlib import Path

import pytest
import torch

import rws
from rws.errors import CodecError, UnknownNameError, UsageError
from rws.io.safetensors_read import TensorFile
from rws.io.safetensors_write import save_tensors
from rws.patching import codecs

# Relative reconstruction error bounds on a Gaussian tensor (REFERENCES.md measures ≈0.0095 for
# bitsandbytes 8-bit, ≈0.09 nf4, ≈0.12 fp4; our absmax int8 at blocksize 64 is ≈0.006).
BOUNDS = {
    "fp32": 0.0,
    "fp16": 1e-3,
    "bf16": 5e-3,
    "int8": 0.008,
    "bnb8": 0.01,
    "nf4": 0.1,
    "fp4": 0.13,
    "ternary": 0.44,  # the L2-optimal {-a, 0, a} of a Gaussian row: ≈0.43
}


@pytest.mark.parametrize("codec", codecs.list_codecs())
def test_roundtrip_error_is_recorded_and_bounded(codec: str) -> None:
    x = torch.randn(300, 77, generator=torch.Generator().manual_seed(0))
    enc = codecs.encode("w", x, codec)
    back = codecs.decode("w", enc, tuple(x.shape))
    err = float((back - x).norm() / x.norm())
    assert back.dtype == torch.float32 and back.shape == x.shape
    assert err <= BOUNDS[codec]
    assert enc.params["rel_error"] == pytest.approx(err, rel=5e-3, abs=1e-12)  # 3 digits kept


@pytest.mark.parametrize("codec", codecs.list_codecs())
def test_decode_is_deterministic_bit_for_bit(codec: str) -> None:
    x = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    enc = codecs.encode("w", x, codec)
    a = codecs.decode("w", enc, (1000,))
    b = codecs.decode(
        "w",
        codecs.Encoded(enc.codec, {k: v.clone() for k, v in enc.tensors.items()}, dict(enc.params)),
        (1000,),
    )
    assert torch.equal(a, b)


@pytest.mark.parametrize("codec", ["int8", "bnb8", "nf4", "fp4", "ternary"])
@pytest.mark.parametrize("shape", [(1,), (63,), (65,), (3, 5, 7), ()])
def test_quantized_codecs_handle_odd_sizes(codec: str, shape: tuple[int, ...]) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2)) + 0.5
    back = codecs.decode("w", codecs.encode("w", x, codec), shape)
    assert back.shape == x.shape
    assert float((back - x).norm() / x.norm()) < (0.55 if codec == "ternary" else 0.2)


def test_int8_beats_per_tensor_scaling_on_outliers() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4096, generator=g)
    x[::512] *= 50  # heavy outliers
    err = codecs.encode("w", x, "int8", blocksize=64).params["rel_error"]
    scale = x.abs().max() / 127
    per_tensor = float(((torch.round(x / scale) * scale) - x).norm() / x.norm())
    assert err < per_tensor


def test_int8_zero_block_and_smaller_blocks_are_more_accurate() -> None:
    x = torch.randn(4096, generator=torch.Generator().manual_seed(4))
    x[:64] = 0
    e64 = codecs.encode("w", x, "int8", blocksize=64)
    assert torch.equal(codecs.decode("w", e64, (4096,))[:64], torch.zeros(64))
    e1024 = codecs.encode("w", x, "int8", blocksize=1024)
    assert e64.params["rel_error"] < e1024.params["rel_error"]


def test_bad_blocksize_and_unknown_codec() -> None:
    with pytest.raises(UsageError, match="blocksize 48 must be a power of two"):
        codecs.encode("w", torch.ones(4), "int8", blocksize=48)
    with pytest.raises(UnknownNameError, match="unknown codec 'int3'; choose one of: bf16, bnb8"):
        codecs.encode("w", torch.ones(4), "int3")


def test_corrupt_encoded_data_is_a_codec_error() -> None:
    enc = codecs.encode("w", torch.randn(100), "int8")
    enc = replace(enc, tensors={**enc.tensors, "absmax": enc.tensors["absmax"][:1]})
    with pytest.raises(CodecError, match="tensor 'w': int8 data holds 100 values / 1 scales"):
        codecs.decode("w", enc, (100,))
    enc2 = codecs.encode("w", torch.randn(100), "nf4")
    enc2 = replace(enc2, tensors={k: v for k, v in enc2.tensors.items() if k != "q"})
    with pytest.raises(CodecError, match="lacks stored tensor 'w::q'"):
        codecs.decode("w", enc2, (100,))


BLOCKWISE = {"int8", "bnb8", "nf4", "fp4"}


@pytest.mark.parametrize("codec", codecs.list_codecs())
def test_get_codec_says_whether_the_block_size_matters(codec: str) -> None:
    impl = codecs.get_codec(codec)
    assert impl.name == codec and impl.blockwise == (codec in BLOCKWISE)
    x = torch.randn(512, generator=torch.Generator().manual_seed(5))
    small, large = (codecs.encode("w", x, codec, blocksize=b) for b in (64, 256))
    assert ("blocksize" in small.params) == impl.blockwise
    if impl.blockwise:  # one scale per block: a smaller block stores more scales
        assert small.tensors["absmax"].numel() == 512 // 64
        assert large.tensors["absmax"].numel() == 512 // 256
    else:
        assert all(torch.equal(small.tensors[k], large.tensors[k]) for k in small.tensors)


def test_list_codecs_filters_and_unknown_names_list_the_choices() -> None:
    assert codecs.list_codecs() == [
        "fp32", "fp16", "bf16", "int8", "bnb8", "nf4", "fp4", "ternary"
    ]  # fmt: skip
    assert codecs.list_codecs("fp*") == ["fp32", "fp16", "fp4"]
    assert codecs.list_codecs("int?") == ["int8"] and codecs.list_codecs("zz*") == []
    with pytest.raises(UnknownNameError, match=r"^unknown codec 'int3'; choose one of: bf16, "):
        codecs.get_codec("int3")


def test_encoded_is_immutable() -> None:
    enc = codecs.encode("w", torch.randn(100), "int8")
    with pytest.raises(FrozenInstanceError):
        enc.codec = "fp32"  # type: ignore[misc]
    with pytest.raises(TypeError, match="read-only"):
        enc.params["rel_error"] = 0.0  # type: ignore[index]
    with pytest.raises(TypeError, match="read-only"):
        del enc.tensors["q"]  # type: ignore[attr-defined]
    parts = {"": torch.ones(3)}
    fp = codecs.Encoded("fp32", parts)
    parts[""] = torch.zeros(3)  # the Encoded keeps its own mapping
    assert torch.equal(fp.tensors[""], torch.ones(3))


def test_module_examples_run() -> None:
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner()
    for test in finder.find(codecs, globs=vars(codecs)):
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
    assert runner.summarize(verbose=False).attempted >= 3


def _brute_force_ternary(row: torch.Tensor) -> float:
    """The least squared error of any {-a, 0, a} form of ``row`` (every kept set of the k largest,
    a the mean of their magnitudes, which is the best a for that set)."""
    mag = row.abs().sort(descending=True).values
    return min(float((row.norm() ** 2) - mag[:k].sum() ** 2 / k) for k in range(1, len(row) + 1))


def test_ternary_is_the_l2_optimum_per_output_channel() -> None:
    g = torch.Generator().manual_seed(6)
    x = (
        torch.randn(6, 3, 3, 3, generator=g)
        * torch.tensor([1e-4, 1e-2, 1, 10, 100, 1e4])[:, None, None, None]
    )
    x[2, 0] = 0  # zeros are never coded as ±a
    enc = codecs.encode("w", x, "ternary")
    assert set(enc.tensors) == {"q", "scale"} and enc.tensors["scale"].dtype == torch.bfloat16
    assert enc.tensors["q"].numel() == -(-x.numel() // 5)  # five codes a byte
    back = codecs.decode("w", enc, tuple(x.shape))
    for r in range(6):
        row, got = x[r].reshape(-1), back[r].reshape(-1)
        levels = set(got.abs().unique().tolist())
        assert len(levels - {0.0}) == 1  # {-a, 0, a}
        a = float(enc.tensors["scale"][r].float())
        best = _brute_force_ternary(row)
        # optimal up to a's bf16 rounding (2^-9 relative)
        assert float((got - row).norm() ** 2) <= best * (1 + 1e-6) + (2**-8 * a) ** 2 * row.numel()
    assert bool((back[2, 0] == 0).all())


def test_ternary_packing_roundtrips_and_rejects_bad_bytes() -> None:
    from rws.patching.codecs_ternary import pack, unpack

    t = torch.tensor([-1, 0, 1, 1, -1, 0, 0, 1], dtype=torch.int8)
    q = pack(t)
    assert q.tolist() == [
        0 + 3 * 1 + 9 * 2 + 27 * 2 + 81 * 0,
        1 + 3 * 1 + 9 * 2,
    ]  # last byte: 3 codes
    assert torch.equal(unpack("w", q, 8), t)
    enc = codecs.encode("w", torch.randn(10), "ternary")
    bad = replace(enc, tensors={**enc.tensors, "q": torch.tensor([243, 0], dtype=torch.uint8)})
    with pytest.raises(CodecError, match="tensor 'w': ternary data holds a byte above 242"):
        codecs.decode("w", bad, (10,))
    short = replace(enc, tensors={**enc.tensors, "scale": torch.zeros(2, dtype=torch.bfloat16)})
    with pytest.raises(CodecError, match="holds 2 code bytes / 2 scales"):
        codecs.decode("w", short, (10,))


def test_a_ternary_patch_goes_through_file_apply_remove_and_compose(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(7)
    base = {"conv.weight": torch.randn(8, 4, 3, 3, generator=g), "fc.weight": torch.randn(10, 32)}
    tuned = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    p = rws.extract(base, tuned, codec="ternary")
    assert {t.encoded.codec for t in p.tensors.values()} == {"ternary"}
    p.save(tmp_path / "t.safetensors")
    q = rws.load(tmp_path / "t.safetensors")
    assert q.fingerprint() == p.fingerprint() and q.nbytes() == p.nbytes()
    assert q.nbytes() == sum(-(-v.numel() // 5) + 2 * v.shape[0] for v in base.values())
    save_tensors(tmp_path / "base.safetensors", base)
    rws.apply_file(tmp_path / "base.safetensors", [q], tmp_path / "out.safetensors")
    sd = {k: v.clone() for k, v in base.items()}
    rws.apply(sd, q)
    out = TensorFile(tmp_path / "out.safetensors")
    assert all(torch.equal(out.get(k), sd[k]) for k in base)  # streamed == in memory
    rws.remove_file(tmp_path / "out.safetensors", [q], tmp_path / "back.safetensors")
    back = TensorFile(tmp_path / "back.safetensors")
    assert all(torch.allclose(back.get(k), base[k], atol=1e-6) for k in base)
    both = rws.compose([p, p * 0.5], codec="ternary")  # re-encoded: 1.5·δ's ternary form
    assert both.tensors["fc.weight"].encoded.codec == "ternary"
    want = 1.5 * p.delta("fc.weight")
    assert torch.allclose(both.delta("fc.weight"), want, rtol=1e-2, atol=1e-6)


def test_ternary_ranges_decode_any_run_bit_for_bit() -> None:
    x = torch.randn(7, 3, 3, 3, generator=torch.Generator().manual_seed(8))  # rows of 27
    enc = codecs.encode("w", x, "ternary")
    whole = codecs.decode("w", enc, tuple(x.shape)).reshape(-1)
    dec = codecs.range_decoder("w", enc, tuple(x.shape))
    assert dec is not None and dec.align == 5
    for run in (5, 10, 35, 185):  # runs that cross rows, and the tensor's last (partial) byte
        out = torch.empty(whole.numel())
        for start in range(0, whole.numel(), run):
            dec.decode_into(start, out[start : start + run])
        assert torch.equal(out, whole), run
