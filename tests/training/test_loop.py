"""The training loop (rws.training.loop): accuracy on digits, noise robustness, bit-identical runs
and resume after an interruption."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import rws.training.loop as loop_mod
from rws.io.safetensors_read import TensorFile
from rws.training import TrainConfig, finetune, init_model
from rws.training.state import STATE_FILE
from tests.training.conftest import accuracy, same_weights, tiny_config

# --- training works ----------------------------------------------------------------------------


def test_from_scratch_reaches_85_percent(clean, digits) -> None:
    acc = accuracy(clean.model, digits.test.x, digits.test.y)
    assert acc > 0.85, acc
    assert not clean.model.training
    assert [h.epoch for h in clean.history] == [1, 2, 3, 4, 5, 6]
    assert clean.history[0].lr == 3e-3 and clean.history[-1].lr < 3e-4  # cosine
    assert all(h.val_acc == h.val_clean_acc for h in clean.history)  # a clean run
    assert clean.best_epoch == max(clean.history, key=lambda h: h.val_acc).epoch
    assert clean.history[-1].train_loss < clean.history[0].train_loss


def test_noise_finetune_gains_20_points_on_noisy_images(clean, digits, noisy_test) -> None:
    before = accuracy(clean.model, noisy_test, digits.test.y)
    cfg = TrainConfig(epochs=2, lr=1e-3, optimizer="adam", schedule="cosine", batch_size=32,
                      corruptions=("gaussian_noise",), severity=(5, 5), device="cpu")  # fmt: skip
    rng = torch.get_rng_state()
    res = finetune(copy.deepcopy(clean.model), digits, cfg)
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is never used
    after = accuracy(res.model, noisy_test, digits.test.y)
    assert after - before > 0.20, (before, after)
    assert res.final.val_acc > res.final.val_clean_acc - 0.1  # val corrupted like training


# --- determinism and resume ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def straight(tiny) -> dict[str, torch.nn.Module]:
    """Uninterrupted 3-epoch runs, SGD (step schedule) and Adam (constant)."""
    return {
        "sgd": finetune(init_model("small-cnn", 10, seed=1), tiny, tiny_config()).model,
        "adam": finetune(init_model("small-cnn", 10, seed=1), tiny,
                         tiny_config(optimizer="adam", lr=3e-3, schedule="constant")).model,
    }  # fmt: skip


def test_two_runs_are_bit_identical(straight, tiny) -> None:
    again = finetune(init_model("small-cnn", 10, seed=1), tiny, tiny_config()).model
    assert same_weights(again, straight["sgd"])
    other = finetune(init_model("small-cnn", 10, seed=1), tiny, tiny_config(seed=8)).model
    assert not same_weights(other, straight["sgd"])


@pytest.mark.parametrize(
    "kw", [{}, {"optimizer": "adam", "lr": 3e-3, "schedule": "constant"}], ids=["sgd", "adam"]
)
def test_resume_2_then_3_epochs_is_bit_identical(straight, tiny, tmp_path, kw) -> None:
    first = finetune(init_model("small-cnn", 10, seed=1), tiny, tiny_config(epochs=2, **kw),
                     checkpoint_dir=tmp_path)  # fmt: skip
    assert first.resumed_epochs == 0 and len(first.history) == 2
    res = finetune(init_model("small-cnn", 10, seed=1), tiny, tiny_config(**kw),
                   checkpoint_dir=tmp_path)  # fmt: skip
    assert res.resumed_epochs == 2 and [h.epoch for h in res.history] == [1, 2, 3]
    assert res.history[:2] == first.history
    assert same_weights(res.model, straight[kw.get("optimizer", "sgd")])

    # the checkpoint: safetensors only, optimizer state flattened, config as JSON
    tf = TensorFile(tmp_path / STATE_FILE)
    key = "opt.state.0.exp_avg" if kw else "opt.state.0.momentum_buffer"
    assert key in tf and "rng.train" in tf and "model.conv1.weight" in tf
    meta = json.loads(tf.metadata["rws.train_state"])
    assert meta["epoch"] == 3 and meta["config"]["epochs"] == 3 and len(meta["history"]) == 3
    assert meta["optimizer"]["param_groups"][0]["lr"] == res.history[-1].lr
    tf.close()


def test_resume_after_an_interruption(straight, tiny, tmp_path, monkeypatch) -> None:
    saves = []
    real_save = loop_mod.save_train_state

    def save_then_die(path, state):
        real_save(path, state)
        saves.append(state.epoch)
        if state.epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop_mod, "save_train_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        finetune(init_model("small-cnn", 10, seed=1), tiny, tiny_config(), checkpoint_dir=tmp_path)
    assert saves == [1, 2]
    res = finetune(init_model("small-cnn", 10, seed=1), tiny, tiny_config(),
                   checkpoint_dir=tmp_path)  # fmt: skip
    assert saves == [1, 2, 3] and res.resumed_epochs == 2
    assert same_weights(res.model, straight["sgd"])
    # rerunning a finished run trains nothing and returns the same weights
    again = finetune(init_model("small-cnn", 10, seed=1), tiny, tiny_config(),
                     checkpoint_dir=tmp_path)  # fmt: skip
    assert again.resumed_epochs == 3 and saves == [1, 2, 3]
    assert same_weights(again.model, straight["sgd"])
