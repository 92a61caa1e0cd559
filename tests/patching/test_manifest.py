"""The lean format-3 manifest: old files still load and apply identically, the header shrinks,
64-bit fingerprints still catch a wrong base, strict JSON (duplicate keys, dims) is exit 3."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import rws
from rws.errors import BaseMismatchError, MalformedInputError, UsageError, WholeBaseMismatchError
from rws.io.hashing import tensor_sha256
from rws.io.safetensors_read import TensorFile
from rws.io.safetensors_write import save_tensors
from rws.models import create_model
from rws.patching.format import META_KEY
from rws.patching.tensor import base_digest, fingerprint_matches
from tests.conftest import run

LIBRARY = Path(rws.__file__).resolve().parent / "_signatures"


def _sizes(path: Path) -> tuple[int, int, int]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return len(raw), 8 + n, len(json.loads(raw[8 : 8 + n])["__metadata__"][META_KEY])


def _rewrite(src: Path, dst: Path, text: str) -> None:
    with safe_open(src, "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    save_tensors(dst, tensors, {META_KEY: text})


def test_shipped_format_1_library_loads_applies_identically_and_resaves_lean(
    tmp_path: Path,
) -> None:
    index = json.loads((LIBRARY / "index.json").read_text())
    clean = TensorFile(LIBRARY / "clean.safetensors")
    entry = index["signatures"][1]
    p = rws.load(LIBRARY / entry["file"])
    assert p.fingerprint() == entry["fingerprint"]
    with safe_open(LIBRARY / entry["file"], "pt") as f:
        assert json.loads(f.metadata()[META_KEY])["format"] == 1
        for n in p.names():  # the int8 formula, by hand: q · absmax / 127 per block of 64
            q, absmax = f.get_tensor(n + "::q").float(), f.get_tensor(n + "::absmax")
            scale = (absmax / 127.0).repeat_interleave(64)[: q.numel()]
            assert torch.equal(p.delta(n, scaled=False).reshape(-1), q * scale)
    sd = {k: clean.get(k) for k in clean}
    rws.apply(sd, p)
    assert all(torch.equal(sd[n], clean.get(n) + p.delta(n)) for n in p.names())
    p.save(tmp_path / "lean.safetensors")
    q = rws.load(tmp_path / "lean.safetensors")
    assert q.fingerprint() == p.fingerprint() and q.provenance == p.provenance
    assert all(torch.equal(q.delta(n), p.delta(n)) for n in p.names())
    old, new = _sizes(LIBRARY / entry["file"]), _sizes(tmp_path / "lean.safetensors")
    assert new[2] < old[2] / 2.5 and new[2] <= 0.25 * new[0]  # manifest: ≤ 25 % of the file
    meta = json.loads(json.loads((tmp_path / "lean.safetensors").read_bytes()[8 : 8 + new[1] - 8])[
        "__metadata__"][META_KEY])  # fmt: skip
    assert meta["format"] == 3 and meta["codec"] == "int8" and meta["blocksize"] == 64
    assert set(meta["tensors"]["conv1.weight"]) == {"s", "e", "d", "w", "f"}  # flat q: shape kept


def test_a_new_patch_stores_only_what_cannot_be_derived(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    base = {"conv.weight": torch.randn(32, 16, 3, 3, generator=g), "bn.bias": torch.zeros(32)}
    tuned = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    p = rws.extract(base, tuned, codec="int8")
    p.save(tmp_path / "p.safetensors")
    with safe_open(tmp_path / "p.safetensors", "pt") as f:
        meta = json.loads(f.metadata()[META_KEY])
        assert f.get_tensor("conv.weight::q").shape == (32, 16, 3, 3)  # the shape, from the file
    conv = meta["tensors"]["conv.weight"]
    assert set(conv) == {"e", "d", "w", "f"} and len(conv["f"]) == 16  # codec: the default
    assert conv["f"] == tensor_sha256(base["conv.weight"])[:16]
    bias = p.tensors["bn.bias"]
    assert meta["tensors"]["bn.bias"] == {
        "c": "fp16", "e": bias.encoded.params["rel_error"], "d": bias.delta_l2, "w": 0.0,
        "f": tensor_sha256(base["bn.bias"])[:16],
    }  # fmt: skip
    shas = {n: tensor_sha256(base[n]) for n in base}
    assert meta["base"]["sha256"] == base_digest(shas) and meta["codec"] == "int8"
    q = rws.load(tmp_path / "p.safetensors")
    assert q.tensors["conv.weight"].shape == (32, 16, 3, 3) and q.fingerprint() == p.fingerprint()
    assert fingerprint_matches(q.tensors["conv.weight"].base_sha256, shas["conv.weight"])
    other = {k: v + 1 for k, v in base.items()}
    with pytest.raises(BaseMismatchError, match=r"tensor 'conv\.weight' differs from the base"):
        rws.apply(other, q)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace('"scale":1.0', '"scale":1.0,"scale":1000.0'), "key 'scale'"),
        (lambda t: t.replace('"s":[40]', '"s":[512.7]'), r"malformed shape \[512\.7\]"),
        (lambda t: t.replace('"s":[40]', '"s":[true]'), r"malformed shape \[True\]"),
        (lambda t: t.replace('"s":[40]', '"s":["40"]'), r"malformed shape \['40'\]"),
        (lambda t: t.replace('"scale":1.0', '"scale":1e400'), "out of range"),
        (lambda t: t.replace('"f":"', '"f":"zz'), "malformed fingerprint"),
        (lambda t: t.replace('"codec":"nf4"', '"codec":"int3"'), "unknown codec 'int3'"),
    ],
)
def test_malformed_manifests_are_exit_3(tmp_path: Path, edit, message: str) -> None:
    base = {"w": torch.zeros(40, 8)}
    p = rws.extract(base, {"w": torch.ones(40, 8)}, codec="nf4", codec_map={"*": "nf4"})
    p.save(tmp_path / "p.safetensors")
    with safe_open(tmp_path / "p.safetensors", "pt") as f:
        text = f.metadata()[META_KEY]
    assert '"s":[40,8]' in text
    text = text.replace('"s":[40,8]', '"s":[40]')  # one dim to edit (still a bad shape)
    _rewrite(tmp_path / "p.safetensors", tmp_path / "bad.safetensors", edit(text))
    with pytest.raises(MalformedInputError, match=message) as err:
        rws.load(tmp_path / "bad.safetensors")
    assert err.value.exit_code == 3


def test_old_format_entries_with_bad_dims_or_duplicates_are_exit_3(tmp_path: Path) -> None:
    p = rws.load(LIBRARY / "fog.rws.safetensors")
    with safe_open(LIBRARY / "fog.rws.safetensors", "pt") as f:
        text = f.metadata()[META_KEY]
    for bad, msg in [
        (text.replace('"shape": [16, 3, 3, 3]', '"shape": [16, 3, 3, true]', 1), "malformed shape"),
        (text.replace('"scale": 1.0', '"scale": 1.0, "scale": 1000.0', 1), "key 'scale'"),
    ]:
        _rewrite(LIBRARY / "fog.rws.safetensors", tmp_path / "bad.safetensors", bad)
        with pytest.raises(MalformedInputError, match=msg):
            rws.load(tmp_path / "bad.safetensors")
    assert p.scale == 1.0


def test_names_holding_the_separator_are_refused_at_extract(tmp_path: Path) -> None:
    base = {"a::b.weight": torch.zeros(4, 4), "c.weight": torch.zeros(4, 4)}
    tuned = {k: v + 1 for k, v in base.items()}
    with pytest.raises(UsageError, match=r"tensor 'a::b.weight': its name holds '::'"):
        rws.extract(base, tuned)
    p = rws.extract(base, tuned, exclude=["a::*"])
    assert p.names() == ["c.weight"]


def _digits_pair() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    base = {"a.weight": torch.randn(8, 4, generator=g), "b.weight": torch.randn(8, 8, generator=g)}
    return base, {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base.items()}


def test_the_whole_base_sha256_is_checked_at_apply(tmp_path: Path) -> None:
    base, tuned = _digits_pair()
    p = rws.extract(base, tuned, codec="int8")
    shas = {n: tensor_sha256(base[n]) for n in base}
    assert p.base["sha256"] == base_digest(shas)
    sd = {k: v.clone() for k, v in base.items()}
    report = rws.apply(sd, p)
    assert report.exact == 2 and report.whole_base == 1  # per tensor and whole base: both pass
    # A manifest whose per-tensor 64-bit fingerprints match but whose whole-base sha256 does not
    # (what a crafted 64-bit collision or a corrupt manifest looks like) is refused, file or not.
    forged = p.replace(base={**p.base, "sha256": "ab" * 32})
    with pytest.raises(WholeBaseMismatchError, match=r"match .*'s 64-bit fingerprints but not"):
        rws.apply({k: v.clone() for k, v in base.items()}, forged)
    report = rws.apply({k: v.clone() for k, v in base.items()}, forged, force=True)
    assert any("whole-base sha256" in w for w in report.warnings)
    save_tensors(tmp_path / "base.safetensors", base)
    forged.save(tmp_path / "forged.safetensors")
    with pytest.raises(WholeBaseMismatchError):
        rws.apply_file(tmp_path / "base.safetensors", [rws.load(tmp_path / "forged.safetensors")],
                       tmp_path / "out.safetensors")  # fmt: skip
    assert not (tmp_path / "out.safetensors").exists()  # nothing written
    code, _, err = run("apply", tmp_path / "base.safetensors", tmp_path / "forged.safetensors",
                       "-o", tmp_path / "cli.safetensors")  # fmt: skip
    assert code == 4 and err.count("\n") == 1 and "but not its whole-base sha256" in err
    assert not (tmp_path / "cli.safetensors").exists()
    rws.apply_file(tmp_path / "base.safetensors", [p], tmp_path / "out.safetensors")
    assert (tmp_path / "out.safetensors").exists()


def test_a_patch_cut_to_fewer_tensors_drops_the_whole_base_sha256() -> None:
    base, tuned = _digits_pair()
    p = rws.extract(base, tuned, codec="int8")
    one = p.replace(tensors={"a.weight": p.tensors["a.weight"]})
    assert "sha256" not in one.base and one.base["numel"] == p.base["numel"]
    sd = {k: v.clone() for k, v in base.items()}
    report = rws.apply(sd, one)
    assert report.exact == 1 and report.whole_base == 0  # still checked per tensor
    assert "sha256" in p.replace(scale=0.5).base  # same tensors: kept


def test_a_one_layer_resnet18_patch_keeps_its_manifest_under_a_quarter(tmp_path: Path) -> None:
    model = create_model("resnet18")
    g = torch.Generator().manual_seed(0)
    tuned = {k: v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
             for k, v in model.state_dict().items()}  # fmt: skip
    tuned = {k: v.abs() + 0.5 if k.endswith("running_var") else v for k, v in tuned.items()}
    p = rws.extract(model, tuned, codec="int8", shallow=1)
    assert p.provenance["selection"]["order"] == {"source": "forward pass of ResNet", "count": 21}
    p.save(tmp_path / "one.safetensors")
    size, _, manifest = _sizes(tmp_path / "one.safetensors")
    assert manifest <= 0.25 * size
