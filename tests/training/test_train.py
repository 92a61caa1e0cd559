"""Fine-tuning (rws.train): accuracy on digits, noise robustness, bit-identical determinism and
resume, refusals, BatchNorm recalibration, and ``rws finetune``."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

import rws.training.train as train_mod
from rws.cli.app import _Group
from rws.cli.train import finetune_command, parse_severity, parse_train_corruptions
from rws.data import ImageDataset, Split, load_digits
from rws.errors import CheckpointError, IntegrityError, UnknownNameError, UsageError
from rws.io.checkpoint import file_sha256
from rws.io.safetensors_io import TensorFile, save_tensors
from rws.models import load_model
from rws.robustness.corruptions import CORRUPTIONS, corrupt
from rws.training.state import (
    STATE_FILE,
    flatten_optimizer_state,
    load_train_state,
    unflatten_optimizer_state,
)
from rws.training.train import TrainConfig, finetune, init_model, recalibrate_bn


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model.eval()(x).argmax(1) == y).float().mean())


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    return load_digits()


@pytest.fixture(scope="module")
def tiny(digits: ImageDataset) -> ImageDataset:
    """192 training and 64 validation digits: enough to exercise every code path quickly."""
    tr, va = digits.train, digits.val
    return ImageDataset("digits-tiny", Split(tr.x[:192], tr.y[:192]), Split(va.x[:64], va.y[:64]),
                        Split(va.x[:0], va.y[:0]), num_classes=10)  # fmt: skip


@pytest.fixture(scope="module")
def noisy_test(digits: ImageDataset) -> torch.Tensor:
    return corrupt(digits.test.x, "gaussian_noise", 5, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def clean(digits: ImageDataset) -> train_mod.TrainResult:
    """From the seeded initialisation: Adam 3e-3, cosine, batch 32, 6 epochs (≈ 92% test)."""
    cfg = TrainConfig(epochs=6, lr=3e-3, optimizer="adam", schedule="cosine", batch_size=32,
                      seed=0, device="cpu")  # fmt: skip
    return finetune(init_model("small-cnn", 10, seed=0), digits, cfg)


def tiny_config(**kw) -> TrainConfig:
    base = dict(epochs=3, lr=0.05, batch_size=32, corruptions=("gaussian_noise", "fog"),
                severity=(3, 5), seed=7, device="cpu")  # fmt: skip
    return TrainConfig(**{**base, **kw})


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


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
    real_save = train_mod.save_train_state

    def save_then_die(path, state):
        real_save(path, state)
        saves.append(state.epoch)
        if state.epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "save_train_state", save_then_die)
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


# --- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "error", "message"),
    [
        ({"epochs": 0}, UsageError, "epochs must be an integer ≥ 1, got 0"),
        ({"lr": 0}, UsageError, "lr must be a number > 0"),
        ({"momentum": 1.0}, UsageError, r"momentum must be a number in \[0, 1\)"),
        ({"batch_size": 2.5}, UsageError, "batch_size must be an integer"),
        ({"optimizer": "rmsprop"}, UnknownNameError, "unknown optimizer 'rmsprop'"),
        ({"schedule": "linear"}, UnknownNameError, "unknown lr schedule 'linear'"),
        ({"corruptions": ("fgo",)}, UnknownNameError, "unknown corruption 'fgo'"),
        ({"severity": 7}, UsageError, "severity must be 1–5 or a range"),
        ({"severity": (4, 2)}, UsageError, "severity must be 1–5 or a range"),
        ({"device": "tpu"}, UsageError, "unknown device 'tpu'"),
    ],
)
def test_config_validation(kw, error, message) -> None:
    with pytest.raises(error, match=message):
        TrainConfig(**kw)


def test_config_round_trip_and_schedules() -> None:
    cfg = TrainConfig(corruptions="fog", severity=3, lr=1)
    assert cfg.corruptions == ("fog",) and cfg.severity == (3, 3) and isinstance(cfg.lr, float)
    d = {**cfg.to_dict(), "future_key": [1]}
    back = TrainConfig.from_dict(json.loads(json.dumps(d)))
    assert back == TrainConfig(corruptions=("fog",), severity=(3, 3), lr=1.0, extra=back.extra)
    assert back.extra == {"future_key": [1]} and back.to_dict() == d
    ref = TrainConfig()  # the reference: 50 epochs, ×0.1 at 20 and 40
    assert (ref.epochs, ref.lr, ref.momentum, ref.weight_decay, ref.batch_size) == (
        50, 0.01, 0.9, 5e-4, 128)  # fmt: skip
    lrs = [ref.lr_at(e) for e in (0, 19, 20, 39, 40, 49)]
    assert lrs == pytest.approx([0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-4])
    cos = TrainConfig(epochs=4, schedule="cosine", lr=1.0)
    assert [cos.lr_at(e) for e in range(4)] == pytest.approx([1.0, 0.8536, 0.5, 0.1464], abs=1e-4)
    assert TrainConfig(epochs=1).lr_at(0) == 0.01


# --- BatchNorm recalibration ---------------------------------------------------------------------


def test_recalibrate_bn_moves_only_running_stats(clean, digits, noisy_test) -> None:
    model = copy.deepcopy(clean.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = digits.train.x
    recalibrate_bn(model, x, corruption="gaussian_noise", severity=5, batch_size=128)
    after = model.state_dict()
    assert not model.training
    for k, v in after.items():
        if k.endswith(("running_mean", "running_var")):
            assert not torch.equal(v, before[k]), k
        else:  # weights, biases and num_batches_tracked are bit-identical
            assert torch.equal(v, before[k]), k

    # bn1's statistics are now the cumulative average of conv1's per-batch statistics on the same
    # noisy batches (the default generator is seeded with 0)
    g = torch.Generator().manual_seed(0)
    means, variances = [], []
    with torch.no_grad():
        for a in range(0, len(x), 128):
            f = model.conv1(
                model.normalize(corrupt(x[a : a + 128], "gaussian_noise", 5, generator=g))
            )
            means.append(f.mean((0, 2, 3)))  # (B, 16, 32, 32) -> (16,)
            variances.append(f.var((0, 2, 3)))  # unbiased, as BatchNorm keeps it
    mean, var = torch.stack(means).mean(0), torch.stack(variances).mean(0)
    assert torch.allclose(after["bn1.running_mean"], mean, atol=1e-5)
    assert torch.allclose(after["bn1.running_var"], var, rtol=1e-4)
    assert (before["bn1.running_mean"] - mean).abs().max() > 0.02  # the clean stats were far off
    assert (before["bn1.running_var"] / var).min() < 0.8

    gain = accuracy(model, noisy_test, digits.test.y) - accuracy(clean.model, noisy_test,
                                                                 digits.test.y)  # fmt: skip
    assert gain > 0.10, gain


def test_recalibrate_bn_inputs() -> None:
    model = init_model("small-cnn", 10, seed=0)
    x = torch.rand(8, 3, 32, 32)
    with pytest.raises(UsageError, match="give the severity"):
        recalibrate_bn(model, x, corruption="fog")
    with pytest.raises(UsageError, match="a severity needs a corruption"):
        recalibrate_bn(model, x, severity=3)
    with pytest.raises(UnknownNameError, match="unknown corruption 'fgo'"):
        recalibrate_bn(model, x, corruption="fgo", severity=3)
    with pytest.raises(UsageError, match="no images"):
        recalibrate_bn(model, x[:0])
    # clean recalibration with momentum 1.0 keeps exactly the last batch's statistics
    recalibrate_bn(model, Split(x, torch.zeros(8, dtype=torch.long)), momentum=1.0, batch_size=8)
    with torch.no_grad():
        f = model.conv1(model.normalize(x))
    assert torch.allclose(model.bn1.running_mean, f.mean((0, 2, 3)), atol=1e-6)
    assert model.bn1.momentum == 0.1 and int(model.bn1.num_batches_tracked) == 0


# --- the command --------------------------------------------------------------------------------


def _app() -> typer.Typer:
    app = typer.Typer(cls=_Group, pretty_exceptions_enable=False)
    app.callback()(lambda: None)
    app.command("finetune")(finetune_command)
    return app


def _run(args: list[str]):
    return CliRunner().invoke(_app(), ["finetune", *args])


@pytest.fixture(scope="module")
def clean_file(clean, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "clean.safetensors"
    save_tensors(path, clean.model.state_dict())
    return path


def test_cli_finetune_writes_weights_with_metadata(clean_file, tmp_path) -> None:
    out = tmp_path / "noise.safetensors"
    args = ["--arch", "small-cnn", "--weights", str(clean_file), "--corruption", "gaussian_noise",
            "--severity", "4-5", "--epochs", "1", "--lr", "1e-3", "--optimizer", "adam",
            "--batch-size", "64", "--device", "cpu", "-o", str(out),
            "--checkpoint-dir", str(tmp_path / "ck")]  # fmt: skip
    res = _run(args)
    assert res.exit_code == 0, res.output
    meta = json.loads(TensorFile(out).metadata["rws.finetune"])
    assert meta["arch"] == "small-cnn" and meta["data"] == "digits"
    assert meta["corruptions"] == ["gaussian_noise"] and meta["severity"] == [4, 5]
    assert meta["epochs"] == 1 and meta["seed"] == 0 and meta["config"]["optimizer"] == "adam"
    assert meta["source"] == {"path": str(clean_file), "sha256": file_sha256(clean_file)}
    assert len(meta["history"]) == 1 and meta["best_epoch"] == 1
    model = load_model("small-cnn", out, 10)  # loads strictly
    assert not same_weights(model, load_model("small-cnn", clean_file, 10))
    assert "val acc (corrupted)" in res.stdout and f"wrote {out}" in res.stdout
    assert (tmp_path / "ck" / STATE_FILE).is_file()
    # the same command again resumes the finished run and writes the same bytes
    again = tmp_path / "again.safetensors"
    res = _run([*args[:-3], str(again), *args[-2:]])
    assert res.exit_code == 0, res.output
    assert "resumed after epoch 1 from" in res.stderr
    assert file_sha256(again) == file_sha256(out)


def test_cli_finetune_from_the_seeded_init(tmp_path) -> None:
    outs = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    for out in outs:
        res = _run(["--arch", "small-cnn", "--corruption", "none", "--epochs", "1",
                    "--device", "cpu", "--seed", "3", "-o", str(out)])  # fmt: skip
        assert res.exit_code == 0, res.output
    assert file_sha256(outs[0]) == file_sha256(outs[1])  # seeded init: identical files
    meta = json.loads(TensorFile(outs[0]).metadata["rws.finetune"])
    assert meta["source"] is None and meta["init_seed"] == 3
    assert meta["corruptions"] == [] and "(clean); final val accuracy 0." in res.stdout


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--corruption", "fgo"], 2, "error: unknown corruption 'fgo'; choose one of: "),
        (["--severity", "7"], 2, "error: --severity '7': give a severity 1–5 or a range"),
        (["--epochs", "0"], 2, "error: epochs must be an integer ≥ 1, got 0"),
        (["--weights", "missing.safetensors"], 1, "error: missing.safetensors: no such file"),
        (["--optimizer", "lbfgs"], 2, "error: unknown optimizer 'lbfgs'"),
    ],
)
def test_cli_bad_inputs_one_line(tmp_path, extra, code, message) -> None:
    out = tmp_path / "bad.safetensors"
    args = ["--arch", "small-cnn", "--corruption", "fog", "--epochs", "1", "--device", "cpu",
            "-o", str(out)]  # fmt: skip
    res = _run([*args, *extra])
    assert res.exit_code == code, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), res.stderr
    assert not out.exists()


def test_option_parsers() -> None:
    assert parse_severity("5") == (5, 5) and parse_severity("3-5") == (3, 5)
    for bad in ("0", "6", "4-2", "a", "1-"):
        with pytest.raises(UsageError, match="--severity"):
            parse_severity(bad)
    assert parse_train_corruptions("none") == ()
    assert parse_train_corruptions("all") == CORRUPTIONS
    assert parse_train_corruptions("fog, snow") == ("fog", "snow")
