"""Exact undo (issue 17 item 9): apply with ``undo=True``, remove with the correction, every bit
back, in memory and on files (streamed runs and whole tensors alike)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import rws
from rws.errors import MalformedInputError, UndoMismatchError, UnverifiedError
from rws.patching.files import FileResult
from rws.patching.patch import Patch, encode_deltas
from rws.patching.undo import Undo, bits, undo_path


def _model(dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "a.weight": (torch.randn(256, 128, generator=g) * 0.02).to(dtype),
        "a.bias": torch.randn(256, generator=g).to(dtype),
        "bn.running_var": torch.rand(64, generator=g) + 0.1,
        "e.double": torch.randn(32, generator=g, dtype=torch.float64),
    }


def _patch(base: dict[str, torch.Tensor], rel: float, codec: str, seed: int = 1) -> Patch:
    """A patch with ‖δ‖/‖w‖ = ``rel`` on every tensor."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for name, w in base.items():
        d = torch.randn(
            w.shape, generator=g, dtype=torch.float64 if w.dtype == torch.float64 else None
        )
        items.append((name, d * (rel * w.double().norm() / d.double().norm()).to(d.dtype), w))
    tensors, _ = encode_deltas(items, codec=codec)
    return Patch(tensors=tensors, name=f"rel{rel:g}")


def _applied(tmp_path: Path, *, undo: bool) -> tuple[dict[str, torch.Tensor], Patch, FileResult]:
    """An fp32 patch at ‖δ‖/‖w‖ = 1 applied to the float32 test model's file (``o.safetensors``)."""
    base = _model(torch.float32)
    save_file(base, tmp_path / "base.safetensors")
    p = _patch(base, 1.0, "fp32")
    res = rws.apply_file(
        tmp_path / "base.safetensors", [p], tmp_path / "o.safetensors", undo=undo, clamp_var=True
    )
    return base, p, res


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(bits(a[k]), bits(b[k])) for k in a)


def _exact_share(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    same = sum(int((bits(a[k]) == bits(b[k])).sum()) for k in a)
    return same / sum(v.numel() for v in a.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rel", [1e-3, 1.0])
def test_in_memory_undo_restores_every_bit(dtype: torch.dtype, rel: float) -> None:
    base = _model(dtype)
    p = _patch(base, rel, "int8")
    plain = {k: v.clone() for k, v in base.items()}
    rws.apply(plain, p, clamp_var=True)
    rws.remove(plain, p)
    share = _exact_share(plain, base)
    assert 0.2 < share < 1.0  # plain subtraction drops low bits (fewer at the smaller delta)
    sd = {k: v.clone() for k, v in base.items()}
    rep = rws.apply(sd, (p, 0.7), undo=True, clamp_var=True)
    assert rep.undo is not None and rep.undo.elements() > 0
    back = rws.remove(sd, (p, 0.7), undo=rep.undo)
    assert _same(sd, base)
    assert back.exact == back.checked == 4 and back.unverified == []


def test_lost_share_grows_with_the_delta() -> None:
    base = _model(torch.float32)
    shares = {}
    for rel in (1e-3, 1.0):
        sd = {k: v.clone() for k, v in base.items()}
        rep = rws.apply(sd, _patch(base, rel, "fp32"), undo=True, clamp_var=True)
        assert rep.undo is not None
        shares[rel] = rep.undo.elements() / sum(v.numel() for v in base.values())
    assert 0 < shares[1e-3] < 0.01 < 0.2 < shares[1.0] < 0.5


def test_streamed_file_undo_matches_memory_and_restores_every_bit(tmp_path: Path) -> None:
    base = _model(torch.float32)
    save_file(base, tmp_path / "base.safetensors")
    p, q = _patch(base, 1.0, "int8"), _patch(base, 0.1, "fp16", seed=3)
    p.save(tmp_path / "p.safetensors")
    q.save(tmp_path / "q.safetensors")
    p, q = rws.load(tmp_path / "p.safetensors"), rws.load(tmp_path / "q.safetensors")
    res = rws.apply_file(tmp_path / "base.safetensors", [p, (q, 0.5)], tmp_path / "o.safetensors",
                         undo=True, clamp_var=True)  # fmt: skip
    assert res.undo_path == str(tmp_path / "o.undo.safetensors") == undo_path(res.output)
    assert res.report.undo is not None
    sd = {k: v.clone() for k, v in base.items()}
    mem = rws.apply(sd, p, (q, 0.5), undo=True, clamp_var=True).undo
    assert mem is not None and _same(sd, load_file(tmp_path / "o.safetensors"))
    on_disk = Undo.load(res.undo_path)
    for name, t in mem.tensors.items():  # run-wise (streamed) and whole-tensor corrections agree
        assert torch.equal(
            on_disk.tensors[name].index, t.index.to(on_disk.tensors[name].index.dtype)
        )
        assert torch.equal(bits(on_disk.tensors[name].value), bits(t.value))
    assert os.path.getsize(res.undo_path) < 1.1 * res.report.undo.nbytes() + 4096
    # removed in the other order: the undo file's order is used, so the sum is the same
    back = rws.remove_file(res.output, [q, p], tmp_path / "b.safetensors", strict=True)
    assert back.undo_path == res.undo_path and back.report.exact == 4
    assert _same(load_file(tmp_path / "b.safetensors"), base)


def test_remove_without_undo_is_honest_and_strict_writes_nothing(tmp_path: Path) -> None:
    base, p, _ = _applied(tmp_path, undo=False)
    with pytest.raises(UnverifiedError, match=r"4 tensor\(s\) not verified bit-exact"):
        rws.remove_file(tmp_path / "o.safetensors", [p], tmp_path / "b.safetensors", strict=True)
    assert not (tmp_path / "b.safetensors").exists()
    res = rws.remove_file(tmp_path / "o.safetensors", [p], tmp_path / "b.safetensors")
    assert res.report.exact == 0 and sorted(res.report.unverified) == sorted(base)


def test_an_undo_file_for_other_patches_is_refused_or_skipped(tmp_path: Path) -> None:
    _, p, one = _applied(tmp_path, undo=True)
    half = rws.apply_file(tmp_path / "base.safetensors", [(p, 0.5)], tmp_path / "h.safetensors",
                          undo=True, clamp_var=True)  # fmt: skip
    with pytest.raises(UndoMismatchError, match=r"records rel1:0\.5, not rel1:1"):
        rws.remove_file(one.output, [p], tmp_path / "b.safetensors", undo=half.undo_path)
    os.replace(half.undo_path, one.undo_path)  # found beside the input but not fitting: skipped
    res = rws.remove_file(one.output, [p], tmp_path / "b.safetensors")
    assert res.undo_path is None and "undo file not used" in res.report.warnings[0]


def test_malformed_undo_files_are_refused(tmp_path: Path) -> None:
    *_, res = _applied(tmp_path, undo=True)
    u = Undo.load(res.undo_path)
    t = u.tensors["a.weight"]
    t.index[0] = t.numel  # one past the end
    u.save(tmp_path / "bad.undo.safetensors")
    with pytest.raises(MalformedInputError, match="out of range"):
        Undo.load(tmp_path / "bad.undo.safetensors")
    with pytest.raises(MalformedInputError, match="not an rws undo file"):
        Undo.load(tmp_path / "base.safetensors")
