from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import struct
from pathlib import Path

import pytest
import torch

import rws
from rws.errors import (
    BaseMismatchError,
    FormatVersionError,
    InputFileError,
    NonFiniteError,
    PatchFormatError,
)
from rws.io.safetensors_layout import tensor_bytes
from rws.io.safetensors_write import save_tensors
from rws.patching._readonly import ReadOnlyDict, freeze, thaw
from rws.patching.format import META_KEY


def _pair(seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    base = {
        "a.weight": torch.randn(8, 4, generator=g),
        "a.bias": torch.randn(8, generator=g),
        "b.weight": torch.randn(3, 8, generator=g),
    }
    tuned = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    tuned["a.bias"] = base["a.bias"].clone()  # unchanged: a zero delta, not stored
    return base, tuned


def test_save_load_roundtrip_keeps_everything(tmp_path: Path) -> None:
    base, tuned = _pair()
    p = rws.extract(
        base, tuned, codec="int8", name="fog", description="d", tags={"corruption": "fog"}
    )
    assert p.skipped == ["a.bias"] and p.names() == ["a.weight", "b.weight"]
    p = p.replace(extra={**p.extra, "future_key": {"x": 1}})
    p.save(tmp_path / "p.safetensors")
    q = rws.load(tmp_path / "p.safetensors")
    assert (
        q.fingerprint() == p.fingerprint() and q.tags == {"corruption": "fog"} and q.name == "fog"
    )
    assert q.extra["future_key"] == {"x": 1}  # unknown keys are kept
    for n in p.names():
        assert torch.equal(q.delta(n), p.delta(n))
        assert q.tensors[n].encoded.params["rel_error"] == p.tensors[n].encoded.params["rel_error"]
    assert {k: v for k, v in q.base.items() if k != "sha256"} == {
        "numel": 32 + 8 + 24, "tensors": 3, "dtypes": {"float32": 3}
    } and len(q.base["sha256"]) == 64  # fmt: skip


def test_arithmetic_scales_exactly_and_composes() -> None:
    base, tuned = _pair()
    p = rws.extract(base, tuned, codec="int8")
    half = p * 0.5
    assert half.scale == 0.5 and (0.5 * p).scale == 0.5 and (-p).scale == -1.0
    assert half.fingerprint() == p.fingerprint()  # scale is not content
    assert torch.equal(half.delta("a.weight"), p.delta("a.weight", scaled=False) * 0.5)
    s = p + p * 2
    assert s.kind == "composed" and s.scale == 1.0
    torch.testing.assert_close(s.delta("a.weight"), 3 * p.delta("a.weight"), rtol=0, atol=1e-6)
    z = p - p
    assert z.names() == [] and sorted(z.skipped) == ["a.weight", "b.weight"]
    c = rws.compose([(p, 0.25), (p, 0.25)], codec="int8", codec_map={"*": "int8"})
    assert c.tensors["a.weight"].encoded.codec == "int8"
    torch.testing.assert_close(c.delta("a.weight"), 0.5 * p.delta("a.weight"), rtol=0, atol=1e-3)


def test_compose_refuses_patches_of_different_bases() -> None:
    b1, t1 = _pair(0)
    b2, t2 = _pair(1)
    p1, p2 = rws.extract(b1, t1), rws.extract(b2, t2)
    with pytest.raises(BaseMismatchError, match=r"tensor 'a.weight' differs from the base"):
        p1 + p2
    assert rws.compose([p1, p2], force=True).names() == ["a.weight", "b.weight"]


def test_nan_delta_is_refused() -> None:
    base, tuned = _pair()
    tuned["a.weight"][0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"tensor 'a.weight': the delta contains NaN or Inf"):
        rws.extract(base, tuned)


def _rewrite_meta(src: Path, dst: Path, edit) -> None:
    from safetensors import safe_open

    with safe_open(src, "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        meta = json.loads(f.metadata()[META_KEY])
    edit(meta)
    save_tensors(dst, tensors, {META_KEY: json.dumps(meta)})


def test_unknown_major_version_and_malformed_files(tmp_path: Path) -> None:
    base, tuned = _pair()
    rws.extract(base, tuned, codec="int8").save(tmp_path / "p.safetensors")
    _rewrite_meta(
        tmp_path / "p.safetensors", tmp_path / "v9.safetensors", lambda m: m.update(format=9)
    )
    with pytest.raises(
        FormatVersionError,
        match=r"v9\.safetensors: patch format 9 is newer than this rws understands \(3\); upgrade rws",
    ) as e:
        rws.load(tmp_path / "v9.safetensors")
    assert e.value.exit_code == 3
    _rewrite_meta(
        tmp_path / "p.safetensors", tmp_path / "k.safetensors", lambda m: m.update(kind="magic")
    )
    with pytest.raises(PatchFormatError, match="unknown patch kind 'magic'"):
        rws.load(tmp_path / "k.safetensors")
    _rewrite_meta(
        tmp_path / "p.safetensors",
        tmp_path / "s.safetensors",
        lambda m: m.update(format=2, tensors={"a.weight": {"dtype": "float32", "codec": "int8"}}),
    )
    with pytest.raises(PatchFormatError, match=r"tensor 'a.weight': manifest entry lacks 'shape'"):
        rws.load(tmp_path / "s.safetensors")
    save_tensors(tmp_path / "ckpt.safetensors", base)
    with pytest.raises(PatchFormatError, match="not an rws patch"):
        rws.load(tmp_path / "ckpt.safetensors")
    raw = (tmp_path / "p.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(raw[: len(raw) - 7])
    with pytest.raises(PatchFormatError, match=r"cut\.safetensors: holds \d+ bytes"):
        rws.load(tmp_path / "cut.safetensors")
    (tmp_path / "hdr.safetensors").write_bytes(struct.pack("<Q", 4) + b"[1] ")
    with pytest.raises(PatchFormatError, match="header is not a JSON object"):
        rws.load(tmp_path / "hdr.safetensors")
    with pytest.raises(InputFileError, match="no such file"):
        rws.load(tmp_path / "missing.safetensors")


def test_stray_stored_tensor_is_refused(tmp_path: Path) -> None:
    base, tuned = _pair()
    p = rws.extract(base, tuned)
    save_tensors(
        tmp_path / "x.safetensors",
        {"a.weight": p.delta("a.weight"), "zzz": torch.zeros(1)},
        {META_KEY: json.dumps({**p.manifest(), "format": 3})},
    )
    with pytest.raises(PatchFormatError, match="stored tensor 'zzz' is not in the manifest"):
        rws.load(tmp_path / "x.safetensors")


# --- immutability ---------------------------------------------------------------------------------

DERIVE = {
    "mul": lambda p: p * 0.5,
    "rmul": lambda p: 0.5 * p,
    "div": lambda p: p / 4,
    "neg": lambda p: -p,
    "add": lambda p: p + p,
    "sub": lambda p: p - p * 0.5,
    "compose": lambda p: rws.compose([(p, 0.3), p], codec="int8"),
    "replace": lambda p: p.replace(name="other", scale=2.0),
}


def _labelled(codec: str) -> rws.Patch:
    base, tuned = _pair()
    p = rws.extract(base, tuned, codec=codec, name="fog", tags={"corruption": "fog"},
                    include=["a.*", "b.*"])  # fmt: skip
    return p.replace(extra={"future_key": {"x": [1, 2]}})


def _snapshot(p: rws.Patch) -> tuple:
    """Every number and byte of a patch, as plain values."""
    stored = {
        n: ({s: bytes(tensor_bytes(x)) for s, x in t.encoded.tensors.items()},
            thaw(t.encoded.params), t.base_sha256, t.delta_l2)
        for n, t in p.tensors.items()
    }  # fmt: skip
    return (p.kind, p.scale, p.name, p.description, thaw(p.tags), thaw(p.provenance),
            list(p.skipped), thaw(p.base), thaw(p.extra), p.source, stored)  # fmt: skip


def _try_to_mutate(q: rws.Patch) -> None:
    """Every way of changing a patch through its fields raises."""
    for value in (q.tags, q.provenance, q.base, q.extra, q.tensors):
        with pytest.raises(TypeError, match="read-only"):
            value["k"] = "v"  # type: ignore[index]
        with pytest.raises(TypeError, match="read-only"):
            value.update(k="v")  # type: ignore[attr-defined]
        with pytest.raises(TypeError, match="read-only"):
            value.clear()  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="read-only"):
        q.skipped.append("x")  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="read-only"):  # nested values are read-only too
        q.provenance["sources" if q.kind == "composed" else "selection"].clear()
    for field in ("scale", "kind", "name", "tags", "provenance", "tensors"):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(q, field, 1.0)
    for t in q.tensors.values():
        with pytest.raises(dataclasses.FrozenInstanceError):
            t.base_sha256 = None  # type: ignore[misc]
        with pytest.raises(TypeError, match="read-only"):
            t.encoded.params["blocksize"] = 1  # type: ignore[index]
        with pytest.raises(TypeError, match="read-only"):
            t.encoded.tensors["q"] = torch.zeros(1)  # type: ignore[index]
    for n in q.names():  # decoded deltas belong to the caller
        q.delta(n).add_(1)
        q.delta(n, scaled=False).mul_(0)


@pytest.mark.parametrize("codec", ["fp32", "int8"])
@pytest.mark.parametrize("op", DERIVE)
def test_derived_patches_share_no_mutable_state(op: str, codec: str) -> None:
    p = _labelled(codec)
    before = _snapshot(p)
    q = DERIVE[op](p)
    assert q is not p
    derived = _snapshot(q)
    _try_to_mutate(q)
    _try_to_mutate(p)
    assert _snapshot(p) == before  # the operand: scale, labels, provenance and bytes unchanged
    assert _snapshot(q) == derived
    if op in ("mul", "rmul", "div", "neg", "replace"):  # scaling changes the scale only
        assert q.fingerprint() == p.fingerprint() and q.tags == p.tags


def test_a_patch_copies_what_it_is_built_from_and_replace_makes_a_new_one() -> None:
    p = _labelled("fp32")
    tags, prov = {"corruption": "snow"}, {"origin": {"path": "x"}, "list": [1]}
    skipped = ["c.weight"]
    q = p.replace(tags=tags, provenance=prov, skipped=skipped)
    tags["corruption"], prov["origin"]["path"] = "fog", "y"
    prov["list"].append(2)
    skipped.append("d.weight")
    assert q.tags == {"corruption": "snow"} and q.provenance == {
        "origin": {"path": "x"},
        "list": [1],
    }
    assert q.skipped == ["c.weight"] and p.tags == {"corruption": "fog"}
    assert isinstance(q.tags, dict) and isinstance(q.skipped, list)  # read-only dict/list
    assert json.loads(json.dumps(q.provenance)) == {"origin": {"path": "x"}, "list": [1]}
    m = q.manifest()  # a fresh, mutable copy
    m["provenance"]["origin"]["path"] = "z"
    m["tags"]["k"] = "v"
    assert q.provenance["origin"]["path"] == "x" and "k" not in q.tags
    r = copy.deepcopy(q)
    assert r.fingerprint() == q.fingerprint() and r.provenance == q.provenance
    with pytest.raises(rws.errors.UnknownNameError, match="unknown patch kind 'magic'; choose one"):
        p.replace(kind="magic")


def test_the_readonly_helpers_round_trip() -> None:
    frozen = freeze({"a": [1, {"b": (2, [3])}]})
    assert frozen == {"a": [1, {"b": (2, [3])}]} and isinstance(frozen["a"][1], ReadOnlyDict)
    with pytest.raises(TypeError, match="read-only"):
        frozen["a"][1]["b"][1].append(4)
    plain = thaw(frozen)
    plain["a"][1]["b"][1].append(4)  # mutable again, and a copy
    assert frozen["a"][1]["b"][1] == [3] and type(plain["a"]) is list
    assert pickle.loads(pickle.dumps(frozen)) == frozen
    assert type(copy.copy(frozen)) is ReadOnlyDict and type(frozen | {"c": 1}) is dict
