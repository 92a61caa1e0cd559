from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import rws
from rws.errors import MissingTensorError, NotAppliedError, OutputPathError
from tests.conftest import Trained, within_one_rounding


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_apply_remove_roundtrip_on_files(trained: Trained, tmp_path: Path) -> None:
    patch = rws.extract(trained.clean_path, trained.tuned_path, codec="int8", name="noise")
    patch.save(tmp_path / "p.safetensors")
    p = rws.load(tmp_path / "p.safetensors")
    res = rws.apply_file(trained.clean_pt, [(p, 0.8)], tmp_path / "patched.safetensors")
    assert res.report.exact == res.report.checked == len(p.tensors)
    assert res.stack == [{"sha256": p.fingerprint(), "name": "noise", "scale": 0.8}]
    assert rws.describe(tmp_path / "patched.safetensors")["applied"] == res.stack
    back = rws.remove_file(tmp_path / "patched.safetensors", [p], tmp_path / "back.safetensors")
    assert back.stack == [] and back.report.checked == len(p.tensors)
    clean = trained.clean.state_dict()
    restored = load_file(tmp_path / "back.safetensors")
    patched = load_file(tmp_path / "patched.safetensors")
    for k, v in clean.items():  # within one float32 rounding of the base, everywhere
        assert within_one_rounding(restored[k], v, patched[k]), k
    same = sum(int((restored[k] == v).sum()) for k, v in clean.items())
    assert same / sum(v.numel() for v in clean.values()) > 0.85


def test_bit_exact_roundtrip_for_representable_deltas(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    base = {
        "w": torch.randint(-1000, 1000, (64, 64), generator=g).float() / 8,
        "n": torch.tensor(3),
    }
    delta = torch.randint(-50, 50, (64, 64), generator=g).float() / 16  # exact binary fractions
    save_file(base, tmp_path / "base.safetensors")
    save_file({"w": base["w"] + delta, "n": base["n"]}, tmp_path / "tuned.safetensors")
    p = rws.extract(tmp_path / "base.safetensors", tmp_path / "tuned.safetensors", codec="fp32")
    rws.apply_file(tmp_path / "base.safetensors", [p], tmp_path / "a.safetensors")
    r = rws.remove_file(tmp_path / "a.safetensors", [p], tmp_path / "b.safetensors")
    assert r.report.exact == r.report.checked == 1
    assert (tmp_path / "b.safetensors").read_bytes() != b""
    b = load_file(tmp_path / "b.safetensors")
    assert torch.equal(b["w"], base["w"]) and torch.equal(b["n"], base["n"])


def test_remove_checks_the_applied_stack(trained: Trained, tmp_path: Path) -> None:
    p = rws.extract(trained.clean, trained.tuned, codec="int8", name="noise")
    q = rws.extract(trained.clean, trained.tuned, codec="fp16", name="other")
    rws.apply_file(trained.clean_path, [p], tmp_path / "a.safetensors")
    before = _files(tmp_path)
    with pytest.raises(
        NotAppliedError,
        match=r"a\.safetensors: patch other is not in its applied stack \(applied: noise:1.0\)",
    ) as e:
        rws.remove_file(tmp_path / "a.safetensors", [q], tmp_path / "b.safetensors")
    assert e.value.exit_code == 4
    with pytest.raises(NotAppliedError, match=r"patch noise:0.5 is not in its applied stack"):
        rws.remove_file(tmp_path / "a.safetensors", [(p, 0.5)], tmp_path / "b.safetensors")
    assert _files(tmp_path) == before  # nothing written, input untouched
    r = rws.remove_file(tmp_path / "a.safetensors", [q], tmp_path / "b.safetensors", force=True)
    assert r.stack == [{"sha256": p.fingerprint(), "name": "noise", "scale": 1.0}]


def test_output_equal_to_input_and_failures_write_nothing(trained: Trained, tmp_path: Path) -> None:
    p = rws.extract(trained.clean, trained.tuned, codec="int8")
    p.save(tmp_path / "p.safetensors")
    p = rws.load(tmp_path / "p.safetensors")
    save_file(trained.clean.state_dict(), tmp_path / "clean.safetensors")
    before = _files(tmp_path)
    with pytest.raises(OutputPathError, match=r"clean\.safetensors: is also an input"):
        rws.apply_file(tmp_path / "clean.safetensors", [p], tmp_path / "clean.safetensors")
    with pytest.raises(OutputPathError, match=r"p\.safetensors: is also an input"):
        rws.apply_file(tmp_path / "clean.safetensors", [p], tmp_path / "p.safetensors")
    sd = {k: v for k, v in trained.clean.state_dict().items() if k != "conv2.weight"}
    save_file(sd, tmp_path / "partial.safetensors")
    before["partial.safetensors"] = (tmp_path / "partial.safetensors").read_bytes()
    with pytest.raises(
        MissingTensorError, match=r"tensor 'conv2.weight' is missing from .*partial\.safetensors"
    ):
        rws.apply_file(tmp_path / "partial.safetensors", [p], tmp_path / "out.safetensors")
    save_file(
        trained.tuned.state_dict(), tmp_path / "tuned.safetensors"
    )  # fingerprint mismatch mid-stream
    before["tuned.safetensors"] = (tmp_path / "tuned.safetensors").read_bytes()
    with pytest.raises(rws.RwsError, match="differs from the base"):
        rws.apply_file(tmp_path / "tuned.safetensors", [p], tmp_path / "out.safetensors")
    assert _files(tmp_path) == before
    assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path))


def test_mixed_dtype_checkpoint_keeps_dtypes(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    base = {
        "h": torch.randn(32, 32, generator=g).half(),
        "b": torch.randn(32, 32, generator=g).bfloat16(),
        "d": torch.randn(8, generator=g).double(),
    }
    tuned = {
        k: (v.float() + 0.01 * torch.randn(v.shape, generator=g)).to(v.dtype)
        for k, v in base.items()
    }
    save_file(base, tmp_path / "base.safetensors")
    p = rws.extract(base, tuned, codec="fp32")
    rws.apply_file(tmp_path / "base.safetensors", [p], tmp_path / "out.safetensors")
    out = load_file(tmp_path / "out.safetensors")
    assert {k: v.dtype for k, v in out.items()} == {k: v.dtype for k, v in base.items()}
    assert all(torch.equal(out[k], tuned[k]) for k in base)
