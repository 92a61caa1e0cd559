"""rws.patching.describe: what ``rws inspect`` renders, for patches and checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import torch

import rws
from rws.io.safetensors_write import save_tensors
from rws.patching.describe import describe_patch, is_patch


def _files(tmp_path: Path) -> tuple[Path, Path, rws.Patch]:
    g = torch.Generator().manual_seed(0)
    base = {"a.weight": torch.randn(8, 4, generator=g), "a.bias": torch.randn(8, generator=g),
            "bn.num_batches_tracked": torch.tensor(3)}  # fmt: skip
    tuned = dict(base, **{"a.weight": base["a.weight"] + 0.1})
    p = rws.extract(base, tuned, codec="int8", codec_map={"*": "int8"}, name="p",
                    tags={"corruption": "fog"})  # fmt: skip
    save_tensors(tmp_path / "base.safetensors", base)
    p.save(tmp_path / "p.safetensors")
    return tmp_path / "base.safetensors", tmp_path / "p.safetensors", p


def test_a_patch_is_described_with_sizes_and_labels(tmp_path: Path) -> None:
    base, path, p = _files(tmp_path)
    assert is_patch(path) and not is_patch(base) and not is_patch(tmp_path / "missing")
    d = rws.describe(path)
    assert (d["type"], d["kind"], d["name"], d["scale"]) == ("patch", "delta", "p", 1.0)
    assert d["tags"] == {"corruption": "fog"} and d["fingerprint"] == p.fingerprint()
    assert d["file_bytes"] == path.stat().st_size and d["stored_bytes"] == p.nbytes() == 32 + 4
    assert (d["tensors_stored"], d["tensors_skipped_zero"], d["numel"]) == (1, 1, 32)
    assert [t["name"] for t in d["tensors"]] == ["a.weight"]
    assert d["tensors"][0]["codec"] == "int8" and d["tensors"][0]["blocksize"] == 64
    assert json.loads(json.dumps(d)) == json.loads(json.dumps(describe_patch(rws.load(path))))
    assert describe_patch(p)["path"] is None  # built in memory


def test_a_checkpoint_is_described_with_its_applied_stack(tmp_path: Path) -> None:
    base, path, p = _files(tmp_path)
    rws.apply_file(base, [(rws.load(path), 0.5)], tmp_path / "out.safetensors")
    d = rws.describe(tmp_path / "out.safetensors")
    assert d["type"] == "checkpoint" and d["tensors_total"] == 3 and d["numel"] == 32 + 8 + 1
    assert [t["dtype"] for t in d["tensors"]] == ["float32", "float32", "int64"]
    assert d["applied"] == [{"sha256": p.fingerprint(), "name": "p", "scale": 0.5}]
    assert d["metadata"] == {"format": "pt"}  # rws.* keys are shown as the stack
