"""The ``rws`` method: projection math, BatchNorm modes, averaging, validation, and end to end on
tiny real models (origin → clean / robust fine-tunes on the digits data)."""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import rws
from rws.data import load_digits
from rws.errors import MissingTensorError, ShapeMismatchError, UsageError
from rws.io.checkpoint import open_checkpoint
from rws.methods import RwsOptions, get_method
from rws.methods.rws import batchnorm_tensors, projection_out
from rws.models import create_model
from tests.conftest import accuracy

CORRUPTIONS = ("gaussian_noise", "fog", "contrast")
SEEDS = (1, 2)


# --- tiny real models, trained once per process (test_analysis.py reuses them) -----------------


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int, lr: float, seed: int):
    """Adam, batch 32, ``steps`` updates, seeded batch order; returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    done = 0
    while done < steps:
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(perm) - 31, 32):
            b = perm[i : i + 32]
            loss = nn.functional.cross_entropy(model(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            if done == steps:
                break
    return model.eval()


@dataclass
class Zoo:
    origin: nn.Module  # W0: trained from a seeded init on clean digits
    clean: nn.Module  # Wc: W0 fine-tuned on clean digits
    robust: dict[tuple[str, int], nn.Module]  # Wk: W0 fine-tuned on corruption k (severity 5), seed
    x_test: torch.Tensor
    y_test: torch.Tensor
    corrupted: dict[str, torch.Tensor]  # the test images under each corruption (severity 5)


@functools.cache
def zoo() -> Zoo:
    """About 10 s on one core: width-8 small CNN, 300 origin steps, 60 steps per fine-tune."""
    data = load_digits()
    x, y = data.train.x, data.train.y
    with torch.random.fork_rng():
        torch.manual_seed(0)
        init = create_model("small-cnn", width=8)
    origin = _train(init, x, y, steps=300, lr=3e-3, seed=0)
    clean = _train(copy.deepcopy(origin), x, y, steps=60, lr=1e-3, seed=1)
    robust = {}
    for c in CORRUPTIONS:
        for s in SEEDS:
            xc = rws.corrupt(x, c, 5, generator=torch.Generator().manual_seed(10 + s))
            robust[c, s] = _train(copy.deepcopy(origin), xc, y, steps=60, lr=1e-3, seed=100 + s)
    corrupted = {
        c: rws.corrupt(data.test.x, c, 5, generator=torch.Generator().manual_seed(99))
        for c in CORRUPTIONS
    }
    return Zoo(origin, clean, robust, data.test.x, data.test.y, corrupted)


# --- exact math on hand-made tensors ------------------------------------------------------------


def _sd(**tensors: list) -> dict[str, torch.Tensor]:
    return {k.replace("_", "."): torch.tensor(v, dtype=torch.float32) for k, v in tensors.items()}


W0 = _sd(a_weight=[[1.0, 2.0], [3.0, 4.0]], a_bias=[0.5, -0.5])
WC = _sd(a_weight=[[2.0, 2.0], [3.0, 4.0]], a_bias=[0.5, -0.5])  # dc = e1 (bias: dc = 0)
WK = _sd(a_weight=[[4.0, 3.0], [3.0, 4.0]], a_bias=[1.5, -0.5])  # dk = (3, 1, 0, 0)


def test_projection_matches_hand_computation() -> None:
    delta_of, facts = get_method("rws").prepare(
        open_checkpoint(WC), open_checkpoint(WK), RwsOptions(origin=W0)
    )
    # dk = (3,1,0,0), dc = (1,0,0,0): <dk,dc>/<dc,dc> = 3, RWS = (0,1,0,0)
    assert torch.equal(delta_of("a.weight"), torch.tensor([[0.0, 1.0], [0.0, 0.0]]))
    # bias: dc = 0, nothing to project out: RWS = dk = Wk − W0 (= Wk − Wc here)
    assert torch.equal(delta_of("a.bias"), torch.tensor([1.0, 0.0]))
    assert facts["projection"] is True and facts["bn"] == "average"
    assert facts["origin"] == {"path": "<memory>"}


def test_projection_is_orthogonal_to_the_clean_direction() -> None:
    g = torch.Generator().manual_seed(0)
    w0 = {"c.weight": torch.randn(8, 3, 3, 3, generator=g), "c.bias": torch.randn(8, generator=g)}
    wc = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in w0.items()}
    wk = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in wc.items()}
    patch = rws.extract(wc, wk, method="rws", alpha=1.0, origin=w0)
    assert patch.kind == "rws" and patch.provenance["projection"] is True
    for n in w0:
        dk, dc = (wk[n] - w0[n]).double(), (wc[n] - w0[n]).double()
        expected = dk - (dk.flatten() @ dc.flatten()) / (dc.flatten() @ dc.flatten()) * dc
        got = patch.delta(n).double()
        assert torch.allclose(got, expected, atol=1e-6)
        assert abs(float(got.flatten() @ dc.flatten())) < 1e-5 * float(dc.norm() * got.norm())


def test_projection_out_helper() -> None:
    assert projection_out(torch.tensor([1.0, 1.0]), torch.tensor([2.0, 0.0])).tolist() == [0, 1]
    zero = torch.zeros(2)
    assert projection_out(torch.tensor([1.0, 2.0]), zero).tolist() == [1.0, 2.0]


def test_without_origin_the_signature_is_the_plain_delta() -> None:
    patch = rws.extract(WC, WK, method="rws", alpha=1.0)
    plain = rws.extract(WC, WK, method="delta")
    assert patch.provenance["projection"] is False
    assert "origin" not in patch.provenance  # None values are dropped from provenance
    for n in plain.names():
        assert torch.equal(patch.delta(n), plain.delta(n))


def _applied(sd: dict[str, torch.Tensor], patch: rws.Patch) -> dict[str, torch.Tensor]:
    out = {k: v.clone() for k, v in sd.items()}
    rws.apply(out, patch)
    return out


def test_patch_adds_the_signature_once_times_alpha() -> None:
    """W = Wc + α·RWS (the reference's double α is not copied)."""
    patch = rws.extract(WC, WK, method="rws", alpha=1.0, origin=W0) * 0.5
    out = _applied(WC, patch)
    assert torch.equal(out["a.weight"], torch.tensor([[2.0, 2.5], [3.0, 4.0]]))
    assert torch.equal(out["a.bias"], torch.tensor([1.0, -0.5]))


def test_several_robust_models_average_their_signatures() -> None:
    g = torch.Generator().manual_seed(1)
    w0 = {"c.weight": torch.randn(4, 3, 3, 3, generator=g)}
    wc = {"c.weight": w0["c.weight"] + 0.1 * torch.randn(4, 3, 3, 3, generator=g)}
    wks = [{"c.weight": wc["c.weight"] + torch.randn(4, 3, 3, 3, generator=g)} for _ in range(3)]
    both = rws.extract(wc, wks[0], method="rws", alpha=1.0, origin=w0, robust=wks[1:])
    singles = [
        rws.extract(wc, wk, method="rws", alpha=1.0, origin=w0).delta("c.weight") for wk in wks
    ]
    assert torch.allclose(both.delta("c.weight"), torch.stack(singles).mean(0), atol=1e-6)
    assert len(both.provenance["robust"]) == 3
    one = rws.extract(
        wc, wks[0], method="rws", alpha=1.0, origin=w0, robust=wks[1]
    )  # a single extra works
    assert len(one.provenance["robust"]) == 2


# --- BatchNorm ----------------------------------------------------------------------------------


def _cnn_states(n_robust: int = 2) -> tuple[dict, dict, list[dict]]:
    g = torch.Generator().manual_seed(2)

    def jitter(sd: dict) -> dict:
        return {
            k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
            for k, v in sd.items()
        }

    with torch.random.fork_rng():
        torch.manual_seed(0)
        w0 = create_model("small-cnn", width=4).state_dict()
    wc = jitter(w0)
    return w0, wc, [jitter(w0) for _ in range(n_robust)]


def test_batchnorm_tensors_found_from_running_mean() -> None:
    w0, _, _ = _cnn_states()
    names = batchnorm_tensors(open_checkpoint(w0))
    expected = {f"bn{i}.{s}" for i in (1, 2, 3) for s in ("weight", "bias", "running_mean")}
    expected |= {f"bn{i}.running_var" for i in (1, 2, 3)}
    assert names == expected  # not num_batches_tracked, not fc.bias, not normalize buffers


def test_bn_average_replaces_with_the_robust_mean() -> None:
    w0, wc, wks = _cnn_states()
    patch = rws.extract(wc, wks[0], method="rws", alpha=1.0, origin=w0, robust=wks[1:])
    assert patch.provenance["bn"] == "average"
    for n in ("bn1.weight", "bn2.running_mean", "bn3.running_var"):
        mean = (wks[0][n].double() + wks[1][n].double()) / 2
        assert torch.allclose(patch.delta(n).double(), mean - wc[n].double(), atol=1e-6)
    patched = _applied(wc, patch)
    assert torch.allclose(patched["bn1.running_var"], (wks[0]["bn1.running_var"]
                          + wks[1]["bn1.running_var"]) / 2, atol=1e-6)  # fmt: skip
    assert "bn1.num_batches_tracked" not in patch.tensors
    one = rws.extract(
        wc, wks[0], method="rws", alpha=1.0, origin=w0
    )  # one robust model: exact replacement
    assert torch.equal(_applied(wc, one)["bn2.weight"], wks[0]["bn2.weight"])


def test_bn_delta_projects_and_bn_skip_leaves_out() -> None:
    w0, wc, wks = _cnn_states(1)
    projected = rws.extract(wc, wks[0], method="rws", alpha=1.0, origin=w0, bn="delta")
    d = projected.delta("bn1.weight").double()
    dc = (wc["bn1.weight"] - w0["bn1.weight"]).double()
    assert abs(float(d @ dc)) < 1e-5 * float(d.norm() * dc.norm())
    skipped = rws.extract(wc, wks[0], method="rws", alpha=1.0, origin=w0, bn="skip")
    assert not any(n.startswith("bn") for n in skipped.tensors)
    assert {n for n in skipped.skipped if n.startswith("bn")} == batchnorm_tensors(
        open_checkpoint(wc)
    )
    assert torch.equal(skipped.delta("conv1.weight"), projected.delta("conv1.weight"))


# --- validation ---------------------------------------------------------------------------------


def test_bad_options_are_usage_errors() -> None:
    with pytest.raises(
        UsageError, match=r"--bn 'mean': choose one of average, replace-all, delta, skip"
    ):
        rws.extract(WC, WK, method="rws", alpha=1.0, bn="mean")
    with pytest.raises(UsageError, match="method 'rws' takes origin, robust and bn"):
        rws.extract(WC, WK, method="rws", alpha=1.0, gamma=2.0)
    assert rws.extract(WC, WK, method="rws", alpha=2.0).scale == 2.0  # α: the scale, any method


def test_origin_and_robust_must_match_the_architecture() -> None:
    missing = {"a.weight": W0["a.weight"]}
    with pytest.raises(MissingTensorError, match=r"'a\.bias' is missing from <memory>; the origin"):
        rws.extract(WC, WK, method="rws", alpha=1.0, origin=missing)
    wrong = {**W0, "a.weight": torch.zeros(3, 2)}
    with pytest.raises(ShapeMismatchError, match=r"'a.weight': patch expects shape \[2, 2\]"):
        rws.extract(WC, WK, method="rws", alpha=1.0, origin=wrong)
    with pytest.raises(ShapeMismatchError, match=r"'a\.weight'"):
        rws.extract(WC, WK, method="rws", alpha=1.0, origin=W0, robust=[wrong])
    # a narrower selection only needs the selected tensors in the origin
    patch = rws.extract(WC, WK, method="rws", alpha=1.0, origin=missing, include=["a.weight"])
    assert patch.names() == ["a.weight"]


def test_provenance_records_files_and_hashes(tmp_path) -> None:
    for name, sd in (("w0", W0), ("wc", WC), ("wk", WK)):
        save_file(sd, tmp_path / f"{name}.safetensors")
    f = {n: str(tmp_path / f"{n}.safetensors") for n in ("w0", "wc", "wk")}
    patch = rws.extract(f["wc"], f["wk"], method="rws", alpha=1.0, origin=f["w0"], robust=[f["wk"]])
    prov = patch.provenance
    assert prov["origin"]["path"] == "w0.safetensors" and len(prov["origin"]["sha256"]) == 64
    assert [r["path"] for r in prov["robust"]] == ["wk.safetensors", "wk.safetensors"]
    patch.save(tmp_path / "sig.rws.safetensors")
    assert rws.load(tmp_path / "sig.rws.safetensors").provenance["projection"] is True


# --- end to end on real tiny models -------------------------------------------------------------


# Measured with this setup (width-8 small CNN, one thread; accuracy on the 450 test digits under the
# corruption at severity 5): clean model → clean + averaged RWS of both seeds (robust models alone):
#   gaussian_noise 0.158 → 0.833 (0.802, 0.824); fog 0.129 → 0.511 (0.373, 0.458);
#   contrast 0.100 → 0.427 (0.369, 0.538). Clean test accuracy falls from 0.909 to 0.63 / 0.62 /
#   0.32: these robust fine-tunes are short and lose much clean accuracy themselves (0.25–0.66).
@pytest.mark.parametrize(("corruption", "margin"), [("gaussian_noise", 0.4), ("fog", 0.2),
                                                    ("contrast", 0.2)])  # fmt: skip
def test_signature_restores_robustness_on_its_corruption(corruption: str, margin: float) -> None:
    z = zoo()
    x, y = z.corrupted[corruption], z.y_test
    before = accuracy(z.clean, x, y)
    robust = [z.robust[corruption, s] for s in SEEDS]
    patch = rws.extract(
        z.clean, robust[0], method="rws", alpha=1.0, origin=z.origin, robust=robust[1:]
    )
    model = copy.deepcopy(z.clean)
    with rws.patched(model, patch):
        after = accuracy(model, x, y)
    assert accuracy(model, x, y) == before  # restored on exit
    assert after >= before + margin, (before, after)


def test_training_facts_of_a_finetuned_robust_checkpoint_reach_the_provenance(tmp_path) -> None:
    import json as _json

    from rws.io.safetensors_write import save_tensors

    g = torch.Generator().manual_seed(5)
    clean = {"conv.weight": torch.randn(4, 3, 3, 3, generator=g)}
    robust = {"conv.weight": clean["conv.weight"] + 0.1 * torch.randn(4, 3, 3, 3, generator=g)}
    meta = {"arch": "small-cnn", "data": "digits", "corruptions": ["fog"], "severity": [3, 5],
            "epochs": 4, "seed": 2, "history": []}  # fmt: skip
    save_tensors(tmp_path / "robust.safetensors", robust, {"rws.finetune": _json.dumps(meta)})
    patch = rws.extract(clean, tmp_path / "robust.safetensors", method="rws", alpha=1.0)
    assert patch.provenance["trained"] == {
        k: meta[k] for k in ("arch", "data", "corruptions", "severity", "epochs", "seed")
    }
    assert patch.provenance["projection"] is False


def test_bn_replace_all_replaces_every_bn_tensor_at_full_weight() -> None:
    w0, wc, _ = _cnn_states(0)
    g = torch.Generator().manual_seed(5)
    # a robust model whose tensors are within 2× of the clean ones (as fine-tuning leaves BN
    # tensors): the float32 delta is then exact (Sterbenz), so replacement and undo are exact
    wk = {k: v * (1 + 0.1 * torch.rand(v.shape, generator=g)) if v.is_floating_point() else v
          for k, v in wc.items()}  # fmt: skip
    patch = rws.extract(wc, wk, method="rws", alpha=1.0, origin=w0, bn="replace-all", shallow=1)
    bn = batchnorm_tensors(open_checkpoint(wc))
    assert {n for n, t in patch.tensors.items() if t.fixed} == bn  # bn2, bn3 too: outside layer 1
    assert set(patch.tensors) == bn | {"conv1.weight"}  # conv1 has no bias (BN follows)
    assert patch.provenance["bn"] == "replace-all" and "fixed" not in patch.provenance
    sd = copy.deepcopy(wc)
    rws.apply(sd, patch, scale=0.3)
    for n in bn:
        assert torch.equal(sd[n], wk[n]), n  # exactly replaced, whatever α
    expected = wc["conv1.weight"] + 0.3 * patch.delta("conv1.weight", scaled=False)
    assert torch.allclose(sd["conv1.weight"], expected, atol=1e-7)
    assert torch.equal(sd["conv2.weight"], wc["conv2.weight"])
    report = rws.remove(sd, patch, scale=0.3)
    assert all(torch.equal(sd[n], wc[n]) for n in bn)  # bit for bit
    assert report.inexact in ([], ["conv1.weight"])  # a scaled delta: within one rounding
    assert torch.allclose(sd["conv1.weight"], wc["conv1.weight"], rtol=1e-6, atol=0)
    sd = copy.deepcopy(wc)
    rws.apply(sd, patch, scale=0.0)  # α = 0: no change, fixed tensors included
    assert all(torch.equal(sd[n], wc[n]) for n in wc)


def test_bn_replace_all_averages_several_robust_models() -> None:
    w0, wc, wks = _cnn_states(2)
    patch = rws.extract(
        wc, wks[0], method="rws", alpha=1.0, origin=w0, robust=wks[1:], bn="replace-all"
    )
    sd = copy.deepcopy(wc)
    rws.apply(sd, patch * 0.5)
    mean = (wks[0]["bn3.running_mean"].double() + wks[1]["bn3.running_mean"].double()) / 2
    assert torch.allclose(sd["bn3.running_mean"].double(), mean, atol=1e-6)
    average = rws.extract(wc, wks[0], method="rws", alpha=1.0, origin=w0, robust=wks[1:])
    assert torch.equal(patch.delta("conv2.weight"), average.delta("conv2.weight"))


def test_energy_selection_counts_weights_unless_running_stats() -> None:
    _, wc, _ = _cnn_states(0)
    wk = {k: v.clone() for k, v in wc.items()}
    wk["conv1.weight"] += 0.01
    wk["bn3.running_mean"] += 10.0  # running statistics dominate the delta, as on BN models
    weights = rws.extract(wc, wk, energy=0.9)
    assert weights.provenance["selection"]["layers"] == ["conv1"]
    stats = rws.extract(wc, wk, energy=0.9, running_stats=True)
    assert stats.provenance["selection"]["layers"] == ["conv1", "conv2", "conv3"]
    assert stats.provenance["selection"]["running_stats"] is True


def test_without_a_search_a_signature_is_stored_at_the_safe_default_alpha() -> None:
    """No data, no α: a signature is stored at α = 0.5 (the safest measured choice), a delta at 1."""
    sig, delta = rws.extract(WC, WK, method="rws"), rws.extract(WC, WK, method="delta")
    assert sig.scale == 0.5 and sig.provenance["alpha_default"] is True
    assert sig.provenance["operating_point"] is None
    assert delta.scale == 1.0 and "alpha_default" not in delta.provenance
    full = rws.extract(WC, WK, method="rws", alpha=1.0)
    assert full.scale == 1.0 and "alpha_default" not in full.provenance
    assert torch.equal(full.delta("a.weight"), 2 * sig.delta("a.weight"))  # only the scale differs
