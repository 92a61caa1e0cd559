"""Fixed tensors (``"fixed": true``): full weight whatever α, mean under composition, format 2+."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import rws
from rws.errors import PatchFormatError, UsageError
from rws.patching.format import META_KEY
from rws.patching.patch import Patch, compose, encode_deltas
from rws.patching.tensor import fixed_weights


def _base() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "conv.weight": torch.randn(4, 3, generator=g),
        "bn.weight": 1 + 0.1 * torch.rand(4, generator=g),
        "bn.running_var": 1 + torch.rand(4, generator=g),
    }


def _patch(base: dict[str, torch.Tensor], seed: int, name: str = "p") -> Patch:
    """conv.weight scaled; the BN tensors replaced by values within 2× of the base (exact)."""
    g = torch.Generator().manual_seed(seed)
    tuned = {n: w * (1 + 0.2 * torch.rand(w.shape, generator=g)) for n, w in base.items()}
    deltas = [(n, tuned[n] - w, w) for n, w in base.items()]  # exact: within 2× (Sterbenz)
    tensors, _ = encode_deltas(deltas, codec="fp32", fixed={"bn.weight", "bn.running_var"})
    return Patch(tensors=tensors, name=name)


def _file(tmp_path: Path, name: str) -> dict:
    with safe_open(tmp_path / name, "pt") as f:
        return json.loads(f.metadata()[META_KEY])


def test_fixed_weights_are_the_signed_mean_over_nonzero_alphas() -> None:
    assert fixed_weights([0.3]) == [1.0]
    assert fixed_weights([0.3, 2.0, 0.0]) == [0.5, 0.5, 0.0]
    assert fixed_weights([-0.5]) == [-1.0] and fixed_weights([0.0]) == [0.0]


def test_apply_ignores_scale_for_fixed_tensors_and_remove_restores() -> None:
    base = _base()
    p = _patch(base, 1)
    sd = {k: v.clone() for k, v in base.items()}
    rws.apply(sd, p, scale=0.3)
    target = base["bn.weight"] + p.delta("bn.weight", scaled=False)
    assert torch.equal(sd["bn.weight"], target)
    assert torch.allclose(sd["conv.weight"], base["conv.weight"] + 0.3 * p.delta("conv.weight"))
    assert torch.equal(p.delta("bn.weight"), (p * 0.3).delta("bn.weight"))  # scale: sign only
    rws.remove(sd, p, scale=0.3)
    assert torch.equal(sd["bn.weight"], base["bn.weight"])
    assert torch.equal(sd["bn.running_var"], base["bn.running_var"])
    rws.apply(sd, -p)  # a negative α takes the replacement back off
    assert torch.allclose(sd["bn.weight"], base["bn.weight"] - p.delta("bn.weight"))


def test_compose_keeps_one_patch_and_means_the_replacements() -> None:
    base = _base()
    p1, p2 = _patch(base, 1, "a"), _patch(base, 2, "b")
    one = compose([p1])
    for n, t in p1.tensors.items():
        assert one.tensors[n].fixed == t.fixed
        assert torch.equal(one.delta(n), p1.delta(n))
    both = compose([(p1, 0.5), (p2, 0.5)])
    mean = (p1.delta("bn.weight") + p2.delta("bn.weight")) / 2
    assert (
        torch.allclose(both.delta("bn.weight"), mean, atol=1e-7) and both.tensors["bn.weight"].fixed
    )
    conv = 0.5 * p1.delta("conv.weight") + 0.5 * p2.delta("conv.weight")
    assert torch.allclose(both.delta("conv.weight"), conv, atol=1e-7)
    off = compose([(p1, 1.0), (p2, 0.0)])  # a coefficient of 0 leaves that patch out entirely
    assert torch.equal(off.delta("bn.weight"), p1.delta("bn.weight"))
    sd1 = {k: v.clone() for k, v in base.items()}
    sd2 = {k: v.clone() for k, v in base.items()}
    rws.apply(sd1, (p1, 0.5), (p2, 0.5))
    rws.apply(sd2, both)
    assert all(torch.allclose(sd1[n], sd2[n], atol=1e-6) for n in base)


def test_a_tensor_fixed_in_one_patch_and_scaled_in_another_is_refused() -> None:
    base = _base()
    tensors, _ = encode_deltas([("bn.weight", torch.ones(4), base["bn.weight"])], codec="fp32")
    scaled = Patch(tensors=tensors, name="scaled")
    msg = r"tensor 'bn.weight' is fixed .* in one patch and scaled in another"
    with pytest.raises(UsageError, match=msg):
        compose([_patch(base, 1), scaled])
    with pytest.raises(UsageError, match=msg):
        rws.apply({k: v.clone() for k, v in base.items()}, _patch(base, 1), scaled)


def test_fixed_tensors_are_marked_in_format_3_and_refused_in_format_1(tmp_path: Path) -> None:
    base = _base()
    p = _patch(base, 1)
    p.save(tmp_path / "fixed.safetensors")
    meta = _file(tmp_path, "fixed.safetensors")
    assert meta["format"] == 3 and meta["tensors"]["bn.weight"]["fixed"] is True
    assert "fixed" not in meta["tensors"]["conv.weight"]
    back = rws.load(tmp_path / "fixed.safetensors")
    assert {n for n, t in back.tensors.items() if t.fixed} == {"bn.weight", "bn.running_var"}
    assert back.fingerprint() == p.fingerprint()
    unfixed = Patch(
        tensors={n: t.__class__(**{**t.__dict__, "fixed": False}) for n, t in p.tensors.items()}
    )
    assert unfixed.fingerprint() != p.fingerprint()  # the marker is part of the content
    with safe_open(tmp_path / "fixed.safetensors", "pt") as f:
        stored = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    old = {**meta, "format": 1, "tensors": {
        n: {"shape": list(base[n].shape), "dtype": "float32", "codec": "fp32", "fixed": True}
        for n in meta["tensors"]
    }}  # fmt: skip
    save_file(stored, tmp_path / "bad.safetensors", {META_KEY: json.dumps(old)})
    with pytest.raises(PatchFormatError, match="'fixed' needs format 2"):
        rws.load(tmp_path / "bad.safetensors")
    desc = rws.describe(tmp_path / "fixed.safetensors")
    assert desc["tensors_fixed"] == 2 and [t["fixed"] for t in desc["tensors"]] == [
        False,
        True,
        True,
    ]


def test_streamed_file_apply_and_remove_honour_fixed_tensors(tmp_path: Path) -> None:
    base = _base()
    save_file(base, tmp_path / "base.safetensors")
    p = _patch(base, 1)
    p.save(tmp_path / "p.safetensors")
    p = rws.load(tmp_path / "p.safetensors")
    rws.apply_file(tmp_path / "base.safetensors", [(p, 0.3)], tmp_path / "a.safetensors")
    sd = {k: v.clone() for k, v in base.items()}
    rws.apply(sd, p, scale=0.3)
    applied = load_file(tmp_path / "a.safetensors")
    assert all(torch.equal(applied[n], sd[n]) for n in base)  # streamed == in memory
    res = rws.remove_file(tmp_path / "a.safetensors", [p], tmp_path / "b.safetensors")
    back = load_file(tmp_path / "b.safetensors")
    assert torch.equal(back["bn.weight"], base["bn.weight"])
    assert torch.equal(back["bn.running_var"], base["bn.running_var"])
    assert res.stack == []
