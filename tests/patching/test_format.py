"""rws.patching.format: the registry of patch kinds and how reading a file checks the kind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import rws
from rws.errors import PatchFormatError, UnknownNameError
from rws.io.safetensors_write import save_tensors
from rws.patching import format
from rws.registry import Registry


def _patch() -> rws.Patch:
    base = {"w": torch.arange(6.0).reshape(2, 3)}
    return rws.extract(base, {"w": base["w"] + 0.25}, name="p")


def _with_kind(src: Path, dst: Path, kind: object) -> None:
    with safe_open(src, "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        meta = json.loads(f.metadata()[format.META_KEY])
    save_tensors(dst, tensors, {format.META_KEY: json.dumps({**meta, "kind": kind})})


def test_builtin_kinds_are_registered_by_their_owners() -> None:
    kinds = format.list_kinds()
    assert kinds[:2] == ["delta", "composed"]  # registered by the format itself
    assert {"rws", "interpolation", "rift"} <= set(kinds)  # by the methods and the RiFT recipe
    assert format.list_kinds("r*") == [k for k in kinds if k.startswith("r")]
    assert format.PATCH_KINDS.entry("rift").url == "https://arxiv.org/abs/2308.02533"
    with pytest.raises(ValueError, match="patch kind 'delta' is already registered"):
        format.register_kind("delta")
    assert format.register_kind("delta", "again", exist_ok=True) == "delta"
    assert format.PATCH_KINDS.entry("delta").summary == "tuned − base on the selected tensors"


def test_unknown_kinds_are_refused_until_registered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kinds: Registry[str] = Registry("patch kind")
    for entry in format.PATCH_KINDS:
        kinds.add(entry.name, entry.obj, summary=entry.summary, url=entry.url)
    monkeypatch.setattr(format, "PATCH_KINDS", kinds)  # registrations below stay in this test
    p = _patch()
    with pytest.raises(
        UnknownNameError, match=r"unknown patch kind 'ablation'; choose one of: .*delta"
    ):
        p.replace(kind="ablation")
    p.save(tmp_path / "p.safetensors")
    _with_kind(tmp_path / "p.safetensors", tmp_path / "a.safetensors", "ablation")
    with pytest.raises(PatchFormatError, match=r"a\.safetensors: unknown patch kind 'ablation'$"):
        rws.load(tmp_path / "a.safetensors")
    _with_kind(tmp_path / "p.safetensors", tmp_path / "n.safetensors", ["delta"])
    with pytest.raises(PatchFormatError, match=r"unknown patch kind \['delta'\]"):
        rws.load(tmp_path / "n.safetensors")
    format.register_kind("ablation", "a test kind")
    q = rws.load(tmp_path / "a.safetensors")
    assert q.kind == "ablation" and q.fingerprint() == p.fingerprint()
    p.replace(kind="ablation", scale=0.5).save(tmp_path / "b.safetensors")
    b = rws.load(tmp_path / "b.safetensors")
    assert (b.kind, b.scale) == ("ablation", 0.5)
