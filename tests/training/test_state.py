"""Run state (rws.training.state): resume refusals, foreign files, the optimizer state layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rws.data import ImageDataset, Split
from rws.errors import CheckpointError, IntegrityError, UsageError
from rws.io.safetensors_write import save_tensors
from rws.training import finetune, init_model
from rws.training.state import (
    STATE_FILE,
    flatten_optimizer_state,
    load_train_state,
    unflatten_optimizer_state,
)
from tests.training.conftest import tiny_config


@pytest.fixture(scope="module")
def ckpt_dir(tiny, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt")
    finetune(init_model("small-cnn", 10, seed=1), tiny, tiny_config(epochs=2),
             checkpoint_dir=folder)  # fmt: skip
    return folder


@pytest.mark.parametrize(
    ("kw", "error", "message"),
    [
        ({"lr": 0.1}, UsageError, r"holds a run with another config \(lr 0.05 → 0.1\)"),
        ({"corruptions": ("fog",)}, UsageError, "corruptions \\('gaussian_noise', 'fog'\\) → "),
        ({"epochs": 1}, UsageError, "already holds 2 epochs, more than the 1 asked for"),
        ({"epochs": 10}, UsageError, "followed another learning-rate schedule"),
        ({"seed_init": 2}, IntegrityError, "the run started from other initial weights"),
    ],
)
def test_resume_refuses_another_run(ckpt_dir, tiny, kw, error, message) -> None:
    kw = dict(kw)
    before = (ckpt_dir / STATE_FILE).read_bytes()
    init = init_model("small-cnn", 10, seed=kw.pop("seed_init", 1))
    with pytest.raises(error, match=message):
        finetune(init, tiny, tiny_config(**kw), checkpoint_dir=ckpt_dir)
    assert (ckpt_dir / STATE_FILE).read_bytes() == before


def test_resume_refuses_other_data_and_foreign_files(ckpt_dir, tiny, tmp_path) -> None:
    other = ImageDataset("digits-tiny", Split(tiny.train.x[1:], tiny.train.y[1:]), tiny.val,
                         tiny.test, num_classes=10)  # fmt: skip
    with pytest.raises(IntegrityError, match="the run used other data"):
        finetune(init_model("small-cnn", 10, seed=1), other, tiny_config(), checkpoint_dir=ckpt_dir)
    save_tensors(tmp_path / STATE_FILE, {"w": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="not an rws training checkpoint"):
        load_train_state(tmp_path / STATE_FILE)


def test_optimizer_state_round_trip() -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), betas=(0.8, 0.99))
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    tensors, rest = flatten_optimizer_state(opt.state_dict())
    assert sorted(tensors) == [f"opt.state.{i}.{k}" for i in (0, 1)
                               for k in ("exp_avg", "exp_avg_sq", "step")]  # fmt: skip
    json.dumps(rest)  # JSON-able
    back = unflatten_optimizer_state(tensors, json.loads(json.dumps(rest)))
    assert back["param_groups"] == opt.state_dict()["param_groups"]
    assert all(torch.equal(back["state"][i][k], v) for i, s in opt.state_dict()["state"].items()
               for k, v in s.items())  # fmt: skip
