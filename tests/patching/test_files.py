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


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(
        {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    )


def _odd_model(g: torch.Generator) -> dict[str, torch.Tensor]:
    """Tensors of every path: run-wise (f16/bf16/f32, sizes off the run and block grids), whole
    (float64, running variance), untouched (copied) and integer."""
    return {
        "a.weight": torch.randn(37, 53, generator=g).half(),
        "b.weight": torch.randn(1000, generator=g).bfloat16(),
        "c.weight": torch.randn(3, 5, 7, generator=g),
        "d.scalar": torch.tensor(0.25),
        "e.double": torch.randn(40, generator=g).double(),
        "bn.running_var": torch.rand(64, generator=g) + 1,
        "f.untouched": torch.randn(300, generator=g).half(),
        "n.count": torch.tensor(7),
    }


@pytest.mark.parametrize("codec", ["int8", "fp16", "bf16", "fp32"])
def test_streamed_apply_is_the_in_memory_apply_bit_for_bit(
    codec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rws.patching import _stream as pipeline

    monkeypatch.setattr(pipeline, "RUN", 256)  # many runs per tensor, the last one partial
    monkeypatch.setattr(pipeline, "SLOTS", 3)
    g = torch.Generator().manual_seed(5)
    base = _odd_model(g)
    patches = []
    for i in range(2):
        tuned = {
            k: (v.double() + 0.05 * torch.randn(v.shape, generator=g, dtype=torch.double)).to(
                v.dtype
            )
            if k not in ("f.untouched", "n.count")
            else v
            for k, v in base.items()
        }
        p = rws.extract(base, tuned, codec=codec, name=f"p{i}", blocksize=16)
        p.save(tmp_path / f"p{i}.safetensors")
        patches.append(rws.load(tmp_path / f"p{i}.safetensors"))
    save_file(base, tmp_path / "base.safetensors")
    items = [(patches[0], 0.7), patches[1] * 0.5]
    res = rws.apply_file(
        tmp_path / "base.safetensors", items, tmp_path / "o.safetensors", scale=1.5
    )
    want = {k: v.clone() for k, v in base.items()}
    report = rws.apply(want, *items, scale=1.5)
    got = load_file(tmp_path / "o.safetensors")
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert got[k].dtype == v.dtype and torch.equal(_bits(got[k]), _bits(v)), k
    assert (res.report.touched, res.report.checked, res.report.exact) == (
        report.touched,
        report.checked,
        report.exact,
    )
    assert [e["sha256"] for e in res.stack] == [p.fingerprint() for p in patches]
    assert rws.describe(tmp_path / "o.safetensors")["applied"] == res.stack


def test_fingerprints_are_checked_on_the_bytes_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rws.io.checkpoint import open_checkpoint
    from rws.io.hashing import tensor_sha256
    from rws.patching import _stream as pipeline
    from rws.patching.ops import group_by_tensor

    monkeypatch.setattr(pipeline, "RUN", 128)
    g = torch.Generator().manual_seed(6)
    base = {"w": torch.randn(1000, generator=g).half(), "v": torch.randn(77, generator=g)}
    tuned = {k: v + 0.01 for k, v in base.items()}
    p = rws.extract(base, tuned, codec="int8", name="p")
    save_file(base, tmp_path / "base.safetensors")
    ck = open_checkpoint(tmp_path / "base.safetensors")
    plan = group_by_tensor([(p, 1.0)])
    files = pipeline.tensor_files(ck)
    hashes, name = {}, ""
    with pipeline.Reader(ck, files, plan, hashing=True, runs=True) as reader:  # hashed as read
        for item in reader:
            if item[0] == "begin":
                name = item[1]
            elif item[0] == "run":
                reader.release(item[2])
            elif item[0] == "end":
                hashes[name] = item[1]
    assert hashes == {k: tensor_sha256(v) for k, v in base.items()}
    off = dict(base, w=base["w"].clone())
    off["w"][-1] += 1  # one element of the last run differs
    save_file(off, tmp_path / "off.safetensors")
    with pytest.raises(rws.RwsError, match="tensor 'w' differs from the base"):
        rws.apply_file(tmp_path / "off.safetensors", [p], tmp_path / "o.safetensors")
    assert not (tmp_path / "o.safetensors").exists()
    res = rws.apply_file(tmp_path / "off.safetensors", [p], tmp_path / "o.safetensors", force=True)
    assert res.report.mismatched == ["w"] and (res.report.checked, res.report.exact) == (2, 1)


def test_non_finite_results_are_refused_mid_stream(tmp_path: Path) -> None:
    from rws.errors import NonFiniteError

    base = {"w": torch.tensor([1.0, 60000.0]).half().repeat(500)}
    p = rws.extract(base, {"w": base["w"] + 1000}, codec="fp32", name="up")
    save_file(base, tmp_path / "base.safetensors")
    with pytest.raises(NonFiniteError, match="tensor 'w': the patched result contains NaN or Inf"):
        rws.apply_file(tmp_path / "base.safetensors", [p * 10], tmp_path / "o.safetensors")
    with pytest.raises(NonFiniteError, match="tensor 'w': the delta of up contains NaN or Inf"):
        rws.apply_file(tmp_path / "base.safetensors", [p * 1e38], tmp_path / "o.safetensors")
    assert sorted(q.name for q in tmp_path.iterdir()) == ["base.safetensors"]


def test_untouched_tensors_are_copied_with_or_without_copy_file_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    g = torch.Generator().manual_seed(7)
    base = {f"t{i}": torch.randn(100 + i, generator=g) for i in range(5)}
    p = rws.extract(base, dict(base, t2=base["t2"] + 1), codec="fp16")
    save_file(base, tmp_path / "base.safetensors")
    rws.apply_file(tmp_path / "base.safetensors", [p], tmp_path / "a.safetensors")

    def unsupported(*args: object) -> int:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", unsupported, raising=False)
    rws.apply_file(tmp_path / "base.safetensors", [p], tmp_path / "b.safetensors")
    a, b = load_file(tmp_path / "a.safetensors"), load_file(tmp_path / "b.safetensors")
    for k, v in base.items():
        assert torch.equal(a[k], b[k]) and (k == "t2" or torch.equal(a[k], v))
    assert torch.equal(a["t2"], base["t2"] + 1)


def test_a_failure_while_streaming_stops_every_thread_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rws.patching import _stream as pipeline
    from rws.patching.patch import Patch

    monkeypatch.setattr(pipeline, "RUN", 64)
    monkeypatch.setattr(pipeline, "SLOTS", 2)
    base = {f"t{i}": torch.randn(1000) for i in range(20)}
    p = rws.extract(base, {k: v + 1 for k, v in base.items()}, codec="int8", name="p")
    save_file(base, tmp_path / "base.safetensors")
    rws.apply_file(tmp_path / "base.safetensors", [p], tmp_path / "o.safetensors")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:  # the patcher's one-core setting stays in its own thread
        rws.apply_file(tmp_path / "base.safetensors", [p], tmp_path / "o2.safetensors")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    (tmp_path / "o2.safetensors").unlink()
    (tmp_path / "o.safetensors").unlink()

    def boom(self: Patch) -> str:
        raise RuntimeError("boom")

    monkeypatch.setattr(Patch, "fingerprint", boom)  # hashed in the caller's thread meanwhile
    with pytest.raises(RuntimeError, match="boom"):
        rws.apply_file(tmp_path / "base.safetensors", [p], tmp_path / "o.safetensors")
    assert sorted(q.name for q in tmp_path.iterdir()) == ["base.safetensors"]


def test_a_streamed_base_in_another_dtype_is_named_or_recast(tmp_path: Path) -> None:
    from rws.errors import BaseDtypeMismatchError

    g = torch.Generator().manual_seed(8)
    base = {"w": torch.randn(4096, generator=g).half().float()}  # fp32 holding fp16 values
    p = rws.extract(base, {"w": base["w"] + 0.01}, codec="int8", name="p")
    save_file({"w": base["w"].half()}, tmp_path / "half.safetensors")  # the same values
    res = rws.apply_file(tmp_path / "half.safetensors", [p], tmp_path / "o.safetensors")
    assert res.report.recast == ["w"] and res.report.exact == 1
    save_file({"w": (base["w"] + 1).half()}, tmp_path / "other.safetensors")  # other values
    with pytest.raises(
        BaseDtypeMismatchError, match="base is float16, the patch was taken on float32"
    ):
        rws.apply_file(tmp_path / "other.safetensors", [p], tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"scale": "2"}, "entry 1: 'scale' '2' is not a number"),
        ({"scale": None}, "entry 1: 'scale' None is not a number"),
        ({"sha256": 5}, "entry 1: no 'sha256' string"),
        ({"name": None}, "entry 1: no 'name' string"),
    ],
)
def test_an_edited_applied_stack_is_refused_before_writing(
    tmp_path: Path, edit: dict, message: str
) -> None:
    import json

    from safetensors import safe_open

    from rws.errors import CheckpointError

    base = {"w": torch.randn(64, generator=torch.Generator().manual_seed(9))}
    p = rws.extract(base, {"w": base["w"] + 0.5}, codec="fp32", name="p")
    save_file(base, tmp_path / "base.safetensors")
    rws.apply_file(tmp_path / "base.safetensors", [p], tmp_path / "a.safetensors")
    with safe_open(tmp_path / "a.safetensors", "pt") as f:
        meta = dict(f.metadata())
    stack = json.loads(meta["rws.applied"])
    stack[0].update(edit)
    meta["rws.applied"] = json.dumps(stack)
    save_file(load_file(tmp_path / "a.safetensors"), tmp_path / "e.safetensors", meta)
    for call in (rws.apply_file, rws.remove_file):
        with pytest.raises(CheckpointError, match=message) as err:
            call(tmp_path / "e.safetensors", [p], tmp_path / "o.safetensors")
        assert err.value.exit_code == 3 and "e.safetensors" in str(err.value)
    assert not (tmp_path / "o.safetensors").exists()
