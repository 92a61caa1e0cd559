"""File-level workflows: ``train_to_file`` (finetune/advtrain) and ``apply_and_recalibrate``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import rws
from rws.errors import CheckpointError, OutputPathError, UsageError
from rws.io.safetensors_read import TensorFile
from rws.patching.files import apply_file
from rws.training.config import TrainConfig
from rws.training.recalibrate import RECALIBRATED_KEY, apply_and_recalibrate, mix_alpha
from rws.training.runs import train_to_file
from rws.training.weights import RESULT_KEY
from tests.conftest import Trained


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_train_to_file_writes_the_weights_with_their_provenance(tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=1, batch_size=64, corruptions=("fog",), device="cpu", seed=2)
    out = tmp_path / "fog.safetensors"
    res = train_to_file("small-cnn", "digits", None, cfg, out)
    meta = json.loads(TensorFile(out).metadata[RESULT_KEY])
    assert meta["arch"] == "small-cnn" and meta["init_seed"] == 2 and meta["source"] is None
    assert meta["corruptions"] == ["fog"] and res.best_epoch == 1 and len(res.history) == 1
    saved = load_file(out)
    assert all(torch.equal(saved[k], v.cpu()) for k, v in res.model.state_dict().items())


def test_train_to_file_checks_the_output_before_training(tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=1, device="cpu")
    with pytest.raises(OutputPathError, match="its folder does not exist"):
        train_to_file("small-cnn", "digits", None, cfg, tmp_path / "no" / "x.safetensors")
    with pytest.raises(OutputPathError, match="is a folder"):
        train_to_file("small-cnn", "digits", None, cfg, tmp_path)
    assert _files(tmp_path) == set()


@pytest.fixture()
def patch(trained: Trained) -> rws.Patch:
    return rws.extract(trained.clean_path, trained.tuned_path, tags={"corruption": "fog"})


def test_apply_and_recalibrate_is_one_atomic_output(
    trained: Trained, patch: rws.Patch, tmp_path: Path
) -> None:
    out = tmp_path / "r.safetensors"
    res, info = apply_and_recalibrate(trained.clean_path, [(patch, 0.5)], out, arch="small-cnn",
                                      severity=(3, 5))  # fmt: skip
    assert res.output == str(out) and [e["scale"] for e in res.stack] == [0.5]
    assert info == {"data": "digits", "corruptions": ["fog"], "seed": 0, "severity": [3, 5]}
    assert json.loads(TensorFile(out).metadata[RECALIBRATED_KEY]) == info
    plain = apply_file(trained.clean_path, [(patch, 0.5)], tmp_path / "p.safetensors")
    rec, ref = load_file(out), load_file(plain.output)
    assert torch.equal(rec["conv1.weight"], ref["conv1.weight"])
    assert not torch.equal(rec["bn1.running_var"], ref["bn1.running_var"])


def test_apply_and_recalibrate_mixes_statistics_by_alpha(
    trained: Trained, patch: rws.Patch, tmp_path: Path
) -> None:
    kw = {"arch": "small-cnn", "severity": (3, 5)}
    plain = apply_file(trained.clean_path, [(patch, 0.5)], tmp_path / "p.safetensors")
    apply_and_recalibrate(trained.clean_path, [(patch, 0.5)], tmp_path / "r.safetensors", **kw)
    _, info = apply_and_recalibrate(trained.clean_path, [(patch, 0.5)], tmp_path / "m.safetensors",
                                    bn_mix="alpha", **kw)  # fmt: skip
    assert info["mix"] == 0.5
    old, new = load_file(plain.output), load_file(tmp_path / "r.safetensors")
    mixed = load_file(tmp_path / "m.safetensors")
    for k in ("bn1.running_mean", "bn3.running_var"):
        assert torch.allclose(mixed[k], 0.5 * old[k] + 0.5 * new[k], atol=1e-6), k
    assert torch.equal(mixed["conv1.weight"], new["conv1.weight"])
    assert mix_alpha([(patch, 2.0)]) == 1.0 and mix_alpha([(patch, 0.2), (patch * 0.5, 0.4)]) == 0.2
    with pytest.raises(UsageError, match="--bn-mix 'half': choose one of replace, alpha"):
        apply_and_recalibrate(trained.clean_path, [patch], tmp_path / "x.safetensors",
                              bn_mix="half", **kw)  # type: ignore[arg-type]  # fmt: skip


def test_apply_and_recalibrate_writes_nothing_on_error(
    trained: Trained, patch: rws.Patch, tmp_path: Path
) -> None:
    out = tmp_path / "r.safetensors"
    with pytest.raises(UsageError, match="--recalibrate-bn needs --arch"):
        apply_and_recalibrate(trained.clean_path, [patch], out, arch=None)
    with pytest.raises(UsageError, match="severity must be 1–5"):
        apply_and_recalibrate(trained.clean_path, [patch], out, arch="small-cnn", severity=6)
    with pytest.raises(CheckpointError, match=r"\+ patches: does not fit --arch resnet20"):
        apply_and_recalibrate(trained.clean_path, [patch], out, arch="resnet20")
    assert _files(tmp_path) == set()
