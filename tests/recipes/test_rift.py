"""RiFT and interpolation (rws.criticality, rws.alpha, rws.methods.rift/interpolation, the
training options they need, and ``rws advtrain / mrc / rift / extract --method interpolation``)
on a small CNN adversarially trained on digits inside the test."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

import rws
from rws.cli.app import app
from rws.data import ImageDataset, Split, load_digits
from rws.errors import UsageError
from rws.io.checkpoint import open_checkpoint
from rws.recipes.alpha import AlphaPoint, AlphaSettings, choose_alpha, parse_criterion
from rws.recipes.criticality import MrcSettings, layers_of, mrc
from rws.recipes.rift import rift, rift_train_config
from rws.training import TrainConfig, TrainResult, finetune
from rws.training.state import load_train_state
from tests.conftest import Trained

runner = CliRunner()
EPS = 8 / 255


def run(*args: str | Path) -> tuple[int, str, str]:
    res = runner.invoke(app, [str(a) for a in args])
    return res.exit_code, res.stdout, res.stderr


def pgd_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 5) -> float:
    g = torch.Generator().manual_seed(0)
    xa = rws.attack(model, x, y, "pgd", eps=EPS, steps=steps, generator=g)
    with torch.no_grad():
        return float((model.eval()(xa).argmax(1) == y).float().mean())


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    return load_digits()


@pytest.fixture(scope="module")
def small(digits: ImageDataset) -> ImageDataset:
    """384 training and all 270 validation digits."""
    tr = digits.train
    return ImageDataset("digits-small", Split(tr.x[:384], tr.y[:384]), digits.val,
                        digits.test, num_classes=10)  # fmt: skip


@pytest.fixture(scope="module")
def at(trained: Trained, digits: ImageDataset) -> tuple[nn.Module, TrainResult]:
    """The conftest's clean CNN, adversarially trained for 2 epochs (PGD-3, ε = 8/255)."""
    model = copy.deepcopy(trained.clean)
    cfg = TrainConfig(epochs=2, lr=1e-3, optimizer="adam", schedule="constant", batch_size=64,
                      seed=0, attack="pgd", eps=EPS, attack_steps=3, keep_best=True,
                      device="cpu")  # fmt: skip
    res = finetune(model, digits, cfg)
    return res.model, res


# --- training options -------------------------------------------------------------------------


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


# --- MRC ------------------------------------------------------------------------------------------


def naive_mrc(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, s: MrcSettings
) -> dict[str, float]:
    """The reference's way, written independently: a deep copy per module, every parameter
    tracked by autograd, an SGD optimizer stepping on the negated loss."""
    out = {}
    with torch.no_grad():
        l0 = float(sum(F.cross_entropy(model(x[a : a + s.batch_size]), y[a : a + s.batch_size],
                                       reduction="sum").double()
                       for a in range(0, len(y), s.batch_size))) / len(y)  # fmt: skip
    for name, _ in layers_of(model):
        m = copy.deepcopy(model).eval()
        w = dict(m.named_parameters())[f"{name}.weight"]
        w0 = w.detach().clone()
        opt = torch.optim.SGD([w], lr=s.lr)
        best = l0
        for _ in range(s.passes):
            for a in range(0, len(y), s.batch_size):
                opt.zero_grad()
                (-F.cross_entropy(m(x[a : a + s.batch_size]), y[a : a + s.batch_size])).backward()
                opt.step()
            with torch.no_grad():
                d = w - w0
                r = s.eps_ratio * float(w0.double().norm())
                if float(d.double().norm()) > r:
                    w.copy_(w0 + d * (r / float(d.double().norm())))
                loss = float(sum(F.cross_entropy(m(x[a : a + s.batch_size]), y[a : a + s.batch_size],
                                                 reduction="sum").double()
                                 for a in range(0, len(y), s.batch_size))) / len(y)  # fmt: skip
            best = max(best, loss)
        out[name] = best - l0
    return out


def test_mrc_equals_the_reference_way_and_restores_weights(at: tuple, digits: ImageDataset) -> None:
    model, _ = at
    before = {k: v.clone() for k, v in model.state_dict().items()}
    s = MrcSettings(passes=3, attack_steps=3, n_examples=160, batch_size=64)
    res = mrc(model, digits, settings=s, device="cpu")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [m.module for m in res.modules] == ["conv1", "conv2", "conv3", "fc"]
    assert res.modules[1].tensors == ("conv2.weight", "bn2.weight", "bn2.bias",
                                      "bn2.running_mean", "bn2.running_var")  # fmt: skip
    g = torch.Generator().manual_seed(0)
    x, y = digits.train.x[:160], digits.train.y[:160]
    xa = rws.attack(model, x, y, "pgd", eps=EPS, steps=3, generator=g, batch_size=64)
    ref = naive_mrc(model, xa, y, s)
    for m in res.modules:
        assert m.mrc == pytest.approx(ref[m.module], rel=1e-5, abs=1e-6), m.module
        assert m.mrc >= 0 and 0 <= m.robust_acc <= res.base_robust_acc + 1e-9
    assert res.least_critical.mrc == min(ref.values())
    assert max(m.mrc for m in res.modules) > 5 * res.least_critical.mrc  # modules differ a lot
    with pytest.raises(UsageError, match="no conv/linear module 'conv9'"):
        mrc(model, digits, modules=["conv9"], settings=s)


# --- α choice -------------------------------------------------------------------------------------


def test_choose_alpha_rule() -> None:
    pts = [AlphaPoint(0.0, 0.80, 0.60, 0.50), AlphaPoint(0.5, 0.85, 0.62, 0.50),
           AlphaPoint(0.8, 0.90, 0.65, 0.49), AlphaPoint(1.0, 0.90, 0.66, 0.40)]  # fmt: skip
    assert choose_alpha(pts, {"clean": 1}, 0.001).alpha == 0.5  # 0.8 loses a robust point
    assert choose_alpha(pts, {"clean": 1}, 0.02).alpha == 0.8  # tie with 1.0: the smaller α
    assert choose_alpha(pts, {"clean": 1}, None).alpha == 0.8
    assert choose_alpha(pts, {"corrupted": 1}, None).alpha == 1.0
    assert choose_alpha(pts, {"robust": 1}, None).alpha == 0.0
    assert choose_alpha(pts, parse_criterion("clean=1,corrupted=0.5"), 0.02).alpha == 0.8
    assert parse_criterion("clean+corrupted") == {"clean": 1.0, "corrupted": 1.0}
    for bad in ("accuracy", "clean=x", "clean=0"):
        with pytest.raises(UsageError):
            parse_criterion(bad)
    with pytest.raises(UsageError, match="corrupted"):
        AlphaSettings(criterion="corrupted")


# --- RiFT end to end --------------------------------------------------------------------------


def test_rift_patch_reproduces_its_curve(at: tuple, small: ImageDataset, tmp_path: Path) -> None:
    model, _ = at
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ms = MrcSettings(passes=2, attack_steps=3, n_examples=128, batch_size=64)
    alpha = AlphaSettings(grid=(0.5, 1.0), attack_steps=3, max_robust_drop=0.02)
    res = rift(model, small, mrc_settings=ms, train_config=rift_train_config(epochs=2, lr=0.01),
               alpha_settings=alpha, device="cpu", work_dir=tmp_path)  # fmt: skip
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    p = res.patch
    assert p.kind == "rift" and p.scale == res.curve.chosen.alpha
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


# --- interpolation ----------------------------------------------------------------------------


def test_interpolate_fixed_alpha_is_the_midpoint(trained: Trained) -> None:
    p = rws.interpolate(trained.clean, trained.tuned, alpha=0.5)
    assert p.kind == "interpolation" and p.scale == 0.5
    m = copy.deepcopy(trained.clean)
    rws.apply(m, p)
    a, b, c = trained.clean.state_dict(), trained.tuned.state_dict(), m.state_dict()
    for k in p.tensors:
        assert torch.allclose(c[k], (a[k] + b[k]) / 2, atol=1e-6), k


# --- CLI ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(at: tuple, trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("rift")
    save_file(at[0].state_dict(), folder / "at.safetensors")
    save_file(trained.clean.state_dict(), folder / "clean.safetensors")
    save_file(trained.tuned.state_dict(), folder / "tuned.safetensors")
    return folder


def test_cli_advtrain_mrc_rift(files: Path) -> None:
    f = files
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
    code, out, err = run("rift", "--arch", "small-cnn", "--weights", f / "at.safetensors",
                         "--passes", "1", "--steps", "2", "--n-examples", "96", "--epochs", "1",
                         "--corruptions", "fog,gaussian_noise", "--plot", f / "alpha.png",
                         "-o", f / "rift.safetensors")  # fmt: skip
    assert code == 0, err
    p = rws.load(f / "rift.safetensors")
    assert p.kind == "rift" and f"α = {p.scale:g}" in out
    assert p.provenance["base"]["path"] == "at.safetensors"
    assert not math.isnan(p.provenance["alpha_curve"]["points"][0]["corrupted"])
    code, _, err = run("rift", "--arch", "small-cnn", "--weights", f / "at.safetensors",
                       "--module", "conv9", "--passes", "1", "--steps", "1", "--n-examples", "32",
                       "-o", f / "bad.safetensors")  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and "conv9" in err
    assert not (f / "bad.safetensors").exists()


def test_cli_extract_interpolation(files: Path) -> None:
    f = files
    code, _, err = run("extract", f / "clean.safetensors", f / "tuned.safetensors", "--method",
                       "interpolation", "--alpha", "0.25", "-o", f / "i.safetensors")  # fmt: skip
    assert code == 0, err
    assert rws.load(f / "i.safetensors").scale == 0.25
    code, out, err = run("extract", f / "clean.safetensors", f / "tuned.safetensors", "--method",
                         "interpolation", "--alpha", "auto", "--data", "digits", "--arch",
                         "small-cnn", "--criterion", "clean", "--plot", f / "i.png",
                         "-o", f / "auto.safetensors")  # fmt: skip
    assert code == 0, err
    p = rws.load(f / "auto.safetensors")
    curve = p.provenance["alpha_curve"]
    assert p.scale == curve["chosen"] and len(curve["points"]) == 11
    assert max(pt["clean"] for pt in curve["points"]) == next(
        pt["clean"] for pt in curve["points"] if pt["alpha"] == p.scale
    )
    assert (f / "i.png").stat().st_size > 1000 and "robust (PGD)" in out
    for args, what in (
        (["--alpha", "0.5"], "--method interpolation"),  # --alpha with --method delta
        (["--method", "interpolation"], "--alpha"),
        (["--method", "interpolation", "--alpha", "auto"], "--data"),
        (["--method", "interpolation", "--alpha", "x"], "number or auto"),
    ):
        code, _, err = run("extract", f / "clean.safetensors", f / "tuned.safetensors", *args,
                           "-o", f / "bad.safetensors")  # fmt: skip
        assert code == 2 and err.count("\n") == 1 and what in err, (args, err)
    assert not (f / "bad.safetensors").exists()
