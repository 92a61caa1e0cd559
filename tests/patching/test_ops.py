from __future__ import annotations

import copy

import pytest
import torch

import rws
from rws.errors import (
    BaseMismatchError,
    IntegrityError,
    MissingTensorError,
    NonFiniteError,
    ShapeMismatchError,
)
from rws.models import create_model
from tests.conftest import Trained, accuracy, within_one_rounding


def _state(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_fp32_patch_of_all_layers_reproduces_the_tuned_model(trained: Trained) -> None:
    patch = rws.extract(trained.clean, trained.tuned, codec="fp32")
    model = copy.deepcopy(trained.clean)
    report = rws.apply(model, patch)
    assert report.touched == len(patch.tensors) and report.exact == report.checked == report.touched
    tuned, clean = trained.tuned.state_dict(), trained.clean.state_dict()
    same = total = 0
    for k in patch.tensors:  # bit for bit, except where no float32 delta can land exactly
        v = model.state_dict()[k]
        assert within_one_rounding(v, tuned[k], clean[k]), k
        same += int((v == tuned[k]).sum())
        total += v.numel()
    assert same / total > 0.9  # measured 0.94: weights that moved by more than 2× (Sterbenz)
    assert accuracy(model, trained.x_test, trained.y_test) == accuracy(
        trained.tuned, trained.x_test, trained.y_test
    )


def test_patched_context_restores_bit_for_bit_even_on_error(trained: Trained) -> None:
    patch = rws.extract(trained.clean, trained.tuned, codec="int8")
    model = copy.deepcopy(trained.clean)
    before = _state(model)
    with rws.patched(model, patch, scale=0.5):
        assert not torch.equal(model.conv1.weight, before["conv1.weight"])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(RuntimeError, match="boom"), rws.patched(model, patch):
        raise RuntimeError("boom")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_apply_remove_on_a_state_dict_and_alpha_forms(trained: Trained) -> None:
    patch = rws.extract(trained.clean, trained.tuned, codec="fp16")
    clean = trained.clean.state_dict()
    sd = _state(trained.clean)
    rws.apply(sd, (patch, 0.5), patch * 0.5)
    expected = clean["conv1.weight"] + patch.delta("conv1.weight")
    torch.testing.assert_close(sd["conv1.weight"], expected, rtol=0, atol=1e-6)
    patched = {k: v.clone() for k, v in sd.items()}
    report = rws.remove(sd, patch)
    assert report.checked == report.touched == len(patch.tensors)
    ours = naive = total = 0
    for k in patch.tensors:
        assert within_one_rounding(sd[k], clean[k], patched[k]), k
        ours += int((sd[k] == clean[k]).sum())
        naive += int((patched[k] - patch.delta(k) == clean[k]).sum())
        total += sd[k].numel()
    assert ours == naive and ours / total > 0.85  # the bits rounding dropped are gone (test_arith)


def test_errors_change_nothing(trained: Trained) -> None:
    patch = rws.extract(trained.clean, trained.tuned, codec="int8")
    other = create_model("small-cnn", width=8)
    with pytest.raises(
        ShapeMismatchError,
        match=r"tensor 'conv1.weight': patch expects shape \[16, 3, 3, 3\], target has \[8, 3, 3, 3\]",
    ):
        rws.apply(other, patch)
    model = copy.deepcopy(trained.tuned)  # not the base the patch was taken against
    before = _state(model)
    with pytest.raises(
        BaseMismatchError,
        match=r"tensor 'conv1.weight' differs from the base the patch was extracted against .* pass --force",
    ) as e:
        rws.apply(model, patch)
    assert e.value.exit_code == 4
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    report = rws.apply(model, patch, force=True, clamp_var=True)
    assert report.mismatched and report.warnings[0].startswith("tensor ")
    sd = {k: v for k, v in _state(trained.clean).items() if k != "fc.weight"}
    with pytest.raises(MissingTensorError, match=r"tensor 'fc.weight' is missing from <dict>"):
        rws.apply(sd, patch)


def test_non_finite_delta_or_result_is_refused() -> None:
    p = rws.extract({"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([2.0, 2e38])})
    target = {"w": torch.tensor([1.0, torch.finfo(torch.float32).max])}
    with pytest.raises(NonFiniteError, match="tensor 'w': the patched result contains NaN or Inf"):
        rws.apply(target, p, force=True)
    with pytest.raises(NonFiniteError, match=r"tensor 'w': the delta of .* contains NaN or Inf"):
        rws.apply({"w": torch.tensor([1.0, 2.0])}, p * 1e38)  # a finite scale, an infinite delta
    assert torch.equal(target["w"], torch.tensor([1.0, torch.finfo(torch.float32).max]))


def test_running_variance_must_stay_positive(trained: Trained) -> None:
    patch = rws.extract(trained.clean, trained.tuned, include=["bn1.running_var"])
    sd = _state(trained.clean)
    big = -(sd["bn1.running_var"].max() / patch.delta("bn1.running_var").abs().min()).item() * 10
    with pytest.raises(IntegrityError, match="running variance <= 0; pass --clamp-var"):
        rws.apply(sd, patch, scale=big)
    rws.apply(sd, patch, scale=big, clamp_var=True)
    assert float(sd["bn1.running_var"].min()) >= 0.0


def test_applying_never_mutates_the_patch(trained: Trained) -> None:
    for codec in ("fp32", "int8"):
        patch = rws.extract(trained.clean, trained.tuned, codec=codec)
        before = {n: patch.delta(n).clone() for n in patch.names()}
        rws.apply(_state(trained.clean), patch)
        rws.remove(_state(trained.tuned), patch)
        assert all(torch.equal(patch.delta(n), before[n]) for n in patch.names())


def test_a_patch_without_base_fingerprints_needs_force() -> None:
    from dataclasses import replace

    from rws.errors import NoBaseFingerprintError

    base = {"w": torch.tensor([1.0, 2.0]), "v": torch.tensor([3.0])}
    p = rws.extract(base, {"w": torch.tensor([1.5, 2.0]), "v": torch.tensor([4.0])})
    bare = p.replace(tensors={n: replace(t, base_sha256=None) for n, t in p.tensors.items()})
    other = {"w": torch.tensor([7.0, 8.0]), "v": torch.tensor([9.0])}
    with pytest.raises(NoBaseFingerprintError, match="records no base fingerprint"):
        rws.apply(other, bare)
    assert torch.equal(other["w"], torch.tensor([7.0, 8.0]))  # nothing changed
    rep = rws.apply(other, bare, force=True)
    assert (rep.checked, rep.exact, sorted(rep.unchecked)) == (0, 0, ["v", "w"])
    assert torch.equal(other["w"], torch.tensor([7.5, 8.0]))
    back = rws.remove(other, bare)
    assert back.exact == 0 and sorted(back.unverified) == ["v", "w"]  # nothing to verify against


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_alpha_or_scale_is_a_usage_error(bad: float) -> None:
    from rws.errors import UsageError

    base = {"w": torch.tensor([1.0, 2.0])}
    p = rws.extract(base, {"w": torch.tensor([1.5, 2.0])})
    with pytest.raises(UsageError, match="not a finite number"):
        p * bad
    with pytest.raises(UsageError, match="is not finite"):
        rws.apply(base, (p, bad))
    with pytest.raises(UsageError, match="is not finite"):
        rws.apply(base, p, scale=bad)
    assert torch.equal(base["w"], torch.tensor([1.0, 2.0]))
