"""Mixed precision by default, ``codec_map`` overrides, BatchNorm safety, bad input (exit 2)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

import rws
from rws.cli import app
from rws.errors import UnknownNameError, UsageError
from rws.patching import codecs
from rws.patching.codec_map import KEEP, CodecPlan, is_small, parse_codec_map
from rws.patching.encode import encode_deltas


class BnNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3)
        self.bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 4)


def _bn_pair() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A BN model whose tuned running variances sit near 0 (as robust models' can): any lossy
    codec's error on them would drive some below 0."""
    g = torch.Generator().manual_seed(0)
    net = BnNet()
    base = {k: v.detach().clone() for k, v in net.state_dict().items()}
    base["bn.running_var"] = 1 + torch.rand(16, generator=g)
    tuned = {k: v + 0.1 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
             for k, v in base.items()}  # fmt: skip
    tuned["bn.running_var"] = torch.full((16,), 1e-3) + 1e-4 * torch.rand(16, generator=g)
    tuned["bn.running_var"][0] = 40.0  # a wide range: the block's scale is set by it
    return base, tuned


def test_the_codec_applies_to_kernels_and_small_tensors_stay_exact_enough() -> None:
    base, tuned = _bn_pair()
    p = rws.extract(base, tuned, codec="nf4")
    got = {n: t.encoded.codec for n, t in p.tensors.items()}
    assert got["conv.weight"] == "nf4" and got["fc.weight"] == "fp16"  # 432, 64 < 256 elements
    assert {got[n] for n in ("conv.bias", "bn.weight", "bn.bias", "bn.running_mean")} == {"fp16"}
    assert got["bn.running_var"] in ("fp16", "fp32")
    rel = p.tensors["bn.weight"].encoded.params["rel_error"]
    assert 0 < rel <= 2**-11
    assert {t.encoded.codec for t in rws.extract(base, tuned, codec="fp32").tensors.values()} == {
        "fp32"
    }  # lossless stays lossless


def test_codec_map_overrides_first_match_and_every_glob_must_match() -> None:
    assert parse_codec_map({"bn.*": "int8"}) == [("bn.*", "int8")]
    plan = CodecPlan.of("int8", "bn.running_*=fp32, bn.*=nf4, fc.*=bf16")
    assert plan.choose("bn.running_var", (16,)) == "fp32"
    assert plan.choose("bn.weight", (16,)) == "nf4" and plan.choose("conv.bias", (16,)) == KEEP
    assert plan.choose("conv.weight", (16, 3, 3, 3)) == "int8"
    base, tuned = _bn_pair()
    p = rws.extract(base, tuned, codec="int8", codec_map="bn.weight=fp32,conv.*=bnb8")
    assert p.tensors["bn.weight"].encoded.codec == "fp32"
    assert p.tensors["conv.weight"].encoded.codec == p.tensors["conv.bias"].encoded.codec == "bnb8"
    assert p.provenance["codec_map"] == {"bn.weight": "fp32", "conv.*": "bnb8"}
    with pytest.raises(UsageError, match=r"^--codec-map glob 'layer9\.\*' matches no tensor"):
        rws.extract(base, tuned, codec="int8", codec_map="layer9.*=fp32")
    with pytest.raises(UnknownNameError, match="unknown codec 'int3'"):
        rws.extract(base, tuned, codec_map="bn*=int3")
    with pytest.raises(UsageError, match="write GLOB=CODEC"):
        parse_codec_map("bn*")


@pytest.mark.parametrize("codec", codecs.list_codecs())
def test_no_codec_makes_an_invalid_batchnorm_state(codec: str) -> None:
    base, tuned = _bn_pair()
    for codec_map in (None, {"*": codec}):  # the default and every tensor forced to the codec
        p = rws.extract(base, tuned, codec=codec, codec_map=codec_map)
        for alpha in (0.5, 1.0):
            sd = {k: v.clone() for k, v in base.items()}
            rws.apply(sd, p * alpha)  # refuses (IntegrityError) on a running variance <= 0
            assert bool((sd["bn.running_var"] > 0).all())


def test_tensors_no_codec_can_hold_are_usage_errors() -> None:
    ints = torch.tensor(3)
    with pytest.raises(
        UsageError, match=r"'bn.num_batches_tracked' is an integer buffer \(int64\)"
    ):
        encode_deltas([("bn.num_batches_tracked", ints, ints)], codec="nf4")
    big = torch.full((4, 4), 1e5)
    with pytest.raises(
        UsageError, match=r"tensor 'w': fp16 cannot hold it \(\|delta\| up to 1e\+05"
    ):
        encode_deltas([("w", big, torch.zeros(4, 4))], codec="fp16", codec_map={"*": "fp16"})
    assert encode_deltas([("w", big, torch.zeros(4, 4))], codec="fp16")[0]["w"].encoded.codec == (
        "fp32"
    )  # small: kept where fp16 overflows
    with pytest.raises(UsageError, match="holds '::', the patch format's separator"):
        encode_deltas([("a::q", torch.ones(2), torch.zeros(2))], codec="fp32")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sparsify", "topk", "--density", "0"], r"--density 0\.0: must be in \(0, 1\]"),
        (["--sparsify", "dare", "--density", "1.5"], r"--density 1\.5: must be in \(0, 1\]"),
        (["--density", "0.5"], "--density 0.5 goes with --sparsify"),
        (["--codec-map", "zz*=fp32"], "--codec-map glob 'zz\\*' matches no tensor"),
        (["--codec-map", "conv*=int3"], "unknown codec 'int3'"),
        (["--include", "conv.weight", "--codec-map", ":small=int8"], "':small' matches no tensor"),
        (["--include", "*num_batches_tracked"], "no tensor matches"),
    ],
)
def test_bad_compression_options_exit_2_and_write_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    base, tuned = _bn_pair()
    save_file(base, tmp_path / "b.safetensors")
    save_file(tuned, tmp_path / "t.safetensors")
    out = tmp_path / "o.safetensors"
    res = CliRunner().invoke(
        app, ["extract", str(tmp_path / "b.safetensors"), str(tmp_path / "t.safetensors"),
              "-o", str(out), "--codec", "nf4", *args],
    )  # fmt: skip
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1
    assert re.search(message, lines[0]), lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.safetensors", "t.safetensors"]


def test_the_small_key_maps_every_small_tensor_whatever_its_name() -> None:
    base, tuned = _bn_pair()
    p = rws.extract(base, tuned, codec="ternary", codec_map=":small=int8")
    small = {n for n, t in p.tensors.items() if is_small(t.shape)}
    var = "bn.running_var"  # int8 would take it <= 0: kept fp32 whatever the map says
    assert {p.tensors[n].encoded.codec for n in small - {var}} == {"int8"}
    assert p.tensors[var].encoded.codec == "fp32"
    assert {t.encoded.codec for n, t in p.tensors.items() if n not in small} == {"ternary"}
    first = rws.extract(base, tuned, codec="ternary", codec_map="*.running_var=fp32,:small=int8")
    assert {t.encoded.codec for n, t in first.tensors.items() if n.endswith("running_var")} == {
        "fp32"
    }  # the first matching entry wins
    big = {"w": torch.randn(32, 32)}
    with pytest.raises(UsageError, match=r"':small' matches no tensor of the patch \(none is 1-D"):
        rws.extract(big, {"w": big["w"] + 1}, codec="ternary", codec_map=":small=int8")
