"""RiFT end to end (rws.recipes.rift, ``rws advtrain / mrc / rift``) and the training options it
needs, on the conftest's CNN adversarially trained inside the test session."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

import rws
from rws.data import ImageDataset
from rws.errors import UsageError
from rws.io.checkpoint import open_checkpoint
from rws.recipes.alpha import AlphaSettings
from rws.recipes.criticality import MrcSettings, layers_of
from rws.recipes.rift import RIFT_RECIPES, rift, rift_train_config
from rws.training import TrainConfig, finetune
from rws.training.state import load_train_state
from tests.conftest import Trained
from tests.recipes.conftest import EPS, pgd_accuracy, run


def test_adversarial_training_raises_robust_accuracy(trained: Trained, at: tuple) -> None:
    model, _ = at
    x, y = trained.x_test[:200], trained.y_test[:200]
    before, after = pgd_accuracy(trained.clean, x, y), pgd_accuracy(model, x, y)
    assert after > before + 0.10, (before, after)  # measured: ≈0.50 → ≈0.70


def test_config_new_fields_round_trip_and_stay_out_of_old_files() -> None:
    old = TrainConfig(epochs=3).to_dict()
    for key in ("attack", "eps", "trainable", "keep_best", "milestones", "attack_steps"):
        assert key not in old  # runs without them write the same bytes as before
    cfg = TrainConfig(attack="pgd", eps=0.1, trainable=("fc",), keep_best=True, milestones=(0.5,))
    back = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.trainable == ("fc",) and back.milestones == (0.5,)
    assert TrainConfig(attack_steps=10, eps=EPS).step_size == pytest.approx(2 / 255)
    half = TrainConfig(epochs=10, lr=1.0, milestones=(0.5,))
    assert [half.lr_at(e) for e in (0, 4, 5, 9)] == [
        1.0,
        1.0,
        pytest.approx(0.1),
        pytest.approx(0.1),
    ]
    with pytest.raises(rws.errors.UnknownNameError):
        TrainConfig(attack="fgsm")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="milestones"):
        TrainConfig(milestones=(1.5,))


def test_trainable_touches_only_that_module(trained: Trained, small: ImageDataset) -> None:
    model = copy.deepcopy(trained.clean)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(epochs=1, lr=0.05, batch_size=64, trainable=("conv2", "bn2"), seed=0,
                      device="cpu")  # fmt: skip
    finetune(model, small, cfg)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"conv2.weight", "bn2.weight", "bn2.bias", "bn2.running_mean",
                       "bn2.running_var", "bn2.num_batches_tracked"}  # fmt: skip
    assert all(p.requires_grad for p in model.parameters())  # restored
    with pytest.raises(UsageError, match="not in the model"):
        finetune(model, small, TrainConfig(epochs=1, trainable=("conv9",), device="cpu"))


def test_keep_best_resumes_bit_identically(
    trained: Trained, small: ImageDataset, tmp_path: Path
) -> None:
    cfg = dict(lr=0.05, batch_size=96, seed=3, trainable=("fc",), keep_best=True, device="cpu",
               attack="pgd", eps=EPS, attack_steps=1)  # fmt: skip
    whole = finetune(copy.deepcopy(trained.clean), small, TrainConfig(epochs=3, **cfg))
    folder = tmp_path / "ck"
    finetune(
        copy.deepcopy(trained.clean), small, TrainConfig(epochs=2, **cfg), checkpoint_dir=folder
    )
    assert load_train_state(folder / "train_state.safetensors").best is not None
    resumed = finetune(copy.deepcopy(trained.clean), small, TrainConfig(epochs=3, **cfg),
                       checkpoint_dir=folder)  # fmt: skip
    assert resumed.resumed_epochs == 2 and resumed.best_epoch == whole.best_epoch
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    best = max(whole.history, key=lambda h: h.val_acc)
    assert whole.best_epoch == best.epoch


def test_rift_patch_reproduces_its_curve(at: tuple, small: ImageDataset, tmp_path: Path) -> None:
    model, _ = at
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ms = MrcSettings(passes=2, attack_steps=3, n_examples=128, batch_size=64)
    alpha = AlphaSettings(grid=(0.5, 1.0), refine=0, attack_steps=3, max_robust_drop=2,
                          copy="cycled")  # fmt: skip
    res = rift(model, small, mrc_settings=ms, train_config=rift_train_config(epochs=2, lr=0.01),
               alpha_settings=alpha, device="cpu", work_dir=tmp_path)  # fmt: skip
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    p = res.patch
    assert p.kind == "rift" and p.scale == res.curve.chosen.alpha
    assert p.provenance["method"] == "rift" and p.name == f"rift-{res.module}"
    assert p.provenance["alpha"] == p.scale and p.provenance["tool"].startswith("rws ")
    assert p.provenance["selection"]["include"] == list(dict(layers_of(model))[res.module])
    assert res.module == res.mrc.least_critical.module
    assert set(p.tensors) <= set(dict(layers_of(model))[res.module])
    assert p.provenance["module"] == res.module and p.provenance["alpha_curve"]["chosen"] == p.scale
    assert set(p.provenance["mrc"]) == {"conv1", "conv2", "conv3", "fc"}
    base, chosen = res.curve.base, res.curve.chosen
    assert chosen.robust >= base.robust - 0.02 and chosen.clean >= base.clean
    assert chosen.alpha > 0  # measured: α = 1, clean 87.0 → 88.1, PGD-3 29.3 → 27.8
    # the saved patch, applied at its own scale, gives the curve's chosen clean accuracy
    path = tmp_path / "rift.safetensors"
    p.save(path)
    patched = copy.deepcopy(model)
    rws.apply(patched, rws.load(path))
    with torch.no_grad():
        acc = int((patched(small.val.x).argmax(1) == small.val.y).sum()) / len(small.val)
    assert acc == chosen.clean
    # a rerun in the same work folder reuses the MRC table and the fine-tuning checkpoint
    again = rift(model, small, mrc_settings=ms, train_config=rift_train_config(epochs=2, lr=0.01),
                 alpha_settings=alpha, device="cpu", work_dir=tmp_path)  # fmt: skip
    assert again.mrc.seconds == res.mrc.seconds  # read back, not recomputed
    assert all(torch.equal(again.patch.delta(n), p.delta(n)) for n in p.tensors)


def test_cli_advtrain_mrc_rift(at_files: Path) -> None:
    f = at_files
    code, out, err = run("advtrain", "--arch", "small-cnn", "--weights", f / "clean.safetensors",
                         "--epochs", "1", "--steps", "1", "--lr", "0.001", "--optimizer", "adam",
                         "-o", f / "at1.safetensors")  # fmt: skip
    assert code == 0, err
    assert "val acc (PGD)" in out and "adversarially trained" in out
    meta = open_checkpoint(f / "at1.safetensors").metadata
    assert json.loads(meta["rws.finetune"])["config"]["attack"] == "pgd"
    code, out, err = run("mrc", "--arch", "small-cnn", "--weights", f / "at.safetensors",
                         "--passes", "1", "--steps", "2", "--n-examples", "96",
                         "--json", f / "mrc.json", "--plot", f / "mrc.png")  # fmt: skip
    assert code == 0, err
    table = json.loads((f / "mrc.json").read_text())
    assert table["least_critical"] in out and (f / "mrc.png").stat().st_size > 1000
    code, out, err = run("rift", "--arch", "small-cnn", "--weights", f / "at.safetensors", "--grid", "0.5,1",
                         "--refine", "0",
                         "--passes", "1", "--steps", "2", "--n-examples", "96", "--epochs", "1",
                         "--corruptions", "fog,gaussian_noise", "--plot", f / "alpha.png",
                         "-o", f / "rift.safetensors")  # fmt: skip
    assert code == 0, err
    p = rws.load(f / "rift.safetensors")
    assert p.kind == "rift" and f"α = {p.scale:g}" in out
    assert p.provenance["base"]["path"] == "at.safetensors"
    assert not math.isnan(p.provenance["alpha_curve"]["points"][0]["corrupted"])
    assert [pt["alpha"] for pt in p.provenance["alpha_curve"]["points"]] == [0.0, 0.5, 1.0]
    code, _, err = run("rift", "--arch", "small-cnn", "--weights", f / "at.safetensors", "--grid", "0.5,1",
                         "--refine", "0",
                       "--module", "conv9", "--passes", "1", "--steps", "1", "--n-examples", "32",
                       "-o", f / "bad.safetensors")  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and "conv9" in err
    assert not (f / "bad.safetensors").exists()
    code, out, err = run("mrc", "--arch", "small-cnn", "--weights", f / "at.safetensors",
                         "--passes", "1", "--steps", "2", "--n-examples", "96", "--recipe",
                         "reference", "--json", f / "mrc-ref.json")  # fmt: skip
    assert code == 0, err
    ref = json.loads((f / "mrc-ref.json").read_text())["settings"]
    assert (ref["split"], ref["shuffle"], ref["batch_size"]) == ("test", True, 512)
    code, out, err = run("rift", "--arch", "small-cnn", "--weights", f / "at.safetensors", "--grid", "0.5,1",
                         "--refine", "0",
                         "--recipe", "reference", "--passes", "1", "--steps", "1",
                         "--n-examples", "64", "--epochs", "1", "--corruptions", "none",
                         "-o", f / "rift-ref.safetensors")  # fmt: skip
    assert code == 0, err
    assert "reference recipe" in out
    p = rws.load(f / "rift-ref.safetensors")
    assert p.provenance["recipe"] == "reference" and p.provenance["attack"]["runs"] == 3
    assert any(n.endswith("running_var") and not n.startswith(p.provenance["module"])
               for n in p.tensors)  # fmt: skip
    code, _, err = run("rift", "--arch", "small-cnn", "--weights", f / "at.safetensors", "--grid", "0.5,1",
                         "--refine", "0",
                       "--recipe", "paper", "-o", f / "bad.safetensors")  # fmt: skip
    assert code == 2 and "reference" in err and not (f / "bad.safetensors").exists()


def test_reference_recipe_switches_every_choice(at: tuple, small: ImageDataset) -> None:
    model, _ = at
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ms = MrcSettings(passes=2, attack_steps=3, n_examples=128, batch_size=64, split="test",
                     shuffle=True, attack_step_size=2 / 225)  # fmt: skip
    alpha = AlphaSettings(grid=(0.5, 1.0), attack_steps=3, max_robust_drop=2, copy="cycled",
                          attack_runs=3, attack_step_size=2 / 225, refine=0)  # fmt: skip
    cfg = rift_train_config(epochs=1, lr=0.01, **RIFT_RECIPES["reference"].train)
    res = rift(model, small, recipe="reference", module="conv2", mrc_settings=ms,
               train_config=cfg, alpha_settings=alpha, device="cpu")  # fmt: skip
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    tuned = res.tuned.state_dict()
    changed = {
        k for k, v in before.items() if v.is_floating_point() and not torch.equal(v, tuned[k])
    }
    # the weight alone learns; every BatchNorm re-estimates its statistics in train mode
    stats = {k for k in before if k.endswith(("running_mean", "running_var"))}
    assert changed == {"conv2.weight"} | stats, changed
    p = res.patch
    assert set(p.tensors) == changed and p.provenance["recipe"] == "reference"
    assert p.provenance["attack"]["runs"] == 3
    assert p.provenance["attack"]["step_size"] == pytest.approx(2 / 225)
    assert p.provenance["finetune"]["config"]["frozen_mode"] == "train"
    assert p.provenance["finetune"]["config"]["trainable"] == ["conv2.weight"]
    # the patched model at its scale is the reference's interpolation of the whole state dict
    patched = copy.deepcopy(model)
    rws.apply(patched, p)
    a = p.scale
    for k, v in patched.state_dict().items():
        if v.is_floating_point():
            want = before[k] + a * (tuned[k] - before[k])
            assert torch.allclose(v, want, atol=1e-6), k
    with pytest.raises(rws.errors.UnknownNameError, match="RiFT recipe"):
        rift(model, small, recipe="paper")


def test_recipes_table() -> None:
    rws_, ref = RIFT_RECIPES["rws"], RIFT_RECIPES["reference"]
    assert rws_.mrc == MrcSettings() and rws_.train == {} and rws_.attack_runs == 1
    assert (ref.mrc.split, ref.mrc.shuffle, ref.mrc.batch_size) == ("test", True, 512)
    assert ref.mrc.attack_step_size == pytest.approx(2 / 225)
    assert (ref.trains, ref.patch, ref.attack_runs) == ("weight", "changed", 3)
    assert ref.train == {"crop_padding": 4, "crop_fill": "reflect", "flip": True,
                         "frozen_mode": "train"}  # fmt: skip
