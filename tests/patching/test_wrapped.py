"""Patching wrapped models (``torch.compile``, ``DataParallel``) in place, prefixed state dicts, and
targets in another dtype than the patch's base."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import rws
from rws.errors import BaseDtypeMismatchError, BaseMismatchError
from rws.patching.patch import Patch

# the first torch.compile imports dynamo, which warns that torch.jit is deprecated
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv1(x)).mean((2, 3)))


def _pair(dtype: torch.dtype = torch.float32) -> tuple[Net, Net]:
    """A base model and a copy with every float tensor moved a little."""
    torch.manual_seed(0)
    base = Net().to(dtype)
    tuned = copy.deepcopy(base)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for t in tuned.state_dict().values():
            if t.is_floating_point():
                t.add_((0.01 * torch.randn(t.shape, generator=g)).to(dtype))
    return base, tuned


def _patch(base: nn.Module, tuned: nn.Module) -> Patch:
    return rws.extract(base.state_dict(), tuned.state_dict(), codec="fp32")


WRAPS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "compile": lambda m: torch.compile(m),  # built, never called: nothing is compiled
    "DataParallel": lambda m: nn.DataParallel(m),
    "DataParallel(compile)": lambda m: nn.DataParallel(torch.compile(m)),
}


@pytest.mark.parametrize("wrap", list(WRAPS))
def test_apply_remove_patched_reach_the_parameters_of_a_wrapped_model(wrap: str) -> None:
    base, tuned = _pair()
    patch = _patch(base, tuned)
    model = copy.deepcopy(base)
    weight = model.conv1.weight  # the very parameter object is patched, in place
    wrapped = WRAPS[wrap](model)
    assert not set(wrapped.state_dict()) & set(patch.tensors)  # every name is prefixed

    report = rws.apply(wrapped, patch)
    assert report.touched == report.checked == report.exact == len(patch.tensors)
    assert model.conv1.weight is weight
    for name, t in tuned.state_dict().items():  # within one rounding of the tuned weights
        torch.testing.assert_close(model.state_dict()[name], t, rtol=0, atol=1e-6)

    report = rws.remove(wrapped, patch)
    assert report.touched == len(patch.tensors) and model.conv1.weight is weight
    for name, t in base.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], t, rtol=0, atol=1e-6)

    model.load_state_dict(base.state_dict())  # bit for bit the base again (copied in place)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with rws.patched(wrapped, patch, scale=0.5):
        assert not torch.equal(model.conv1.weight, before["conv1.weight"])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_prefixed_state_dict_is_patched_under_its_own_names() -> None:
    base, tuned = _pair()
    patch = _patch(base, tuned)
    sd = {"module._orig_mod." + k: v.clone() for k, v in base.state_dict().items()}
    with rws.patched(sd, patch):
        assert not torch.equal(sd["module._orig_mod.fc.weight"], base.fc.weight)
    assert torch.equal(sd["module._orig_mod.fc.weight"], base.fc.weight)
    report = rws.apply(sd, patch)
    assert report.exact == len(patch.tensors) and all(k.startswith("module.") for k in sd)
    torch.testing.assert_close(
        sd["module._orig_mod.fc.weight"], tuned.fc.weight.detach(), rtol=0, atol=1e-6
    )
    rws.remove(sd, patch)
    torch.testing.assert_close(
        sd["module._orig_mod.fc.weight"], base.fc.weight.detach(), rtol=0, atol=1e-6
    )


def test_a_file_saved_from_a_wrapped_model_is_patched_under_the_model_names(
    tmp_path: Path,
) -> None:
    base, tuned = _pair()
    patch = _patch(base, tuned)
    save_file(nn.DataParallel(torch.compile(copy.deepcopy(base))).state_dict(), tmp_path / "w")
    result = rws.apply_file(tmp_path / "w", [patch], tmp_path / "out.safetensors")
    assert result.report.exact == len(patch.tensors)
    out = load_file(tmp_path / "out.safetensors")
    assert sorted(out) == sorted(tuned.state_dict())  # written as the model names them
    for name, t in tuned.state_dict().items():
        torch.testing.assert_close(out[name], t, rtol=0, atol=1e-6)


def test_a_model_in_another_dtype_is_told_apart_from_another_model() -> None:
    base, tuned = _pair()
    patch = _patch(base, tuned)
    half = copy.deepcopy(base).half()
    before = {k: v.clone() for k, v in half.state_dict().items()}
    with pytest.raises(BaseDtypeMismatchError) as e:
        rws.apply(half, patch)
    msg = str(e.value)
    assert msg.startswith(
        "<Net>: tensor 'conv1.weight': base is float16, the patch was taken on float32 (sha256 "
    )
    assert msg.endswith(
        "); apply the patch to the float32 model before casting it "
        "(rws.apply(model, patch), then model.half()), or pass --force (force=True) to apply it "
        "to the float16 weights anyway"
    )
    assert isinstance(e.value, BaseMismatchError) and e.value.exit_code == 4
    assert (e.value.dtype, e.value.base_dtype) == ("float16", "float32")
    assert all(torch.equal(v, before[k]) for k, v in half.state_dict().items())  # nothing changed

    report = rws.apply(half, patch, force=True)
    bn = sorted(n for n in patch.tensors if n.startswith("bn."))  # 1s and 0s: exact in float16
    assert sorted(report.recast) == bn and report.exact == len(bn)
    assert sorted(report.mismatched) == sorted(set(patch.tensors) - set(bn))
    torch.testing.assert_close(half.fc.weight, tuned.fc.weight.half(), rtol=0, atol=1e-3)

    other = Net()  # the same dtype, other weights: the plain message
    with pytest.raises(BaseMismatchError, match="differs from the base the patch was extracted"):
        rws.apply(other, patch)


@pytest.mark.parametrize(
    ("base_dtype", "target_dtype"),
    [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16)],
)
def test_the_base_in_a_narrower_dtype_passes_when_cast_back_losslessly(
    base_dtype: torch.dtype, target_dtype: torch.dtype
) -> None:
    # a patch extracted on float32 upcasts of bfloat16/float16 weights (the released dtype),
    # applied to the released weights: cast back to float32 they are the patch's base, bit for bit
    low, low_tuned = _pair(base_dtype)
    patch = _patch(copy.deepcopy(low).float(), copy.deepcopy(low_tuned).float())
    assert {t.dtype for t in patch.tensors.values()} == {"float32"}
    model = copy.deepcopy(low).to(target_dtype)
    report = rws.apply(model, patch)
    assert report.exact == report.checked == len(patch.tensors) and not report.mismatched
    assert sorted(report.recast) == sorted(patch.tensors)
    assert model.conv1.weight.dtype == target_dtype
    torch.testing.assert_close(model.conv1.weight, low_tuned.conv1.weight, rtol=0, atol=1e-2)


def test_a_wider_target_passes_only_when_its_values_fit_the_base_dtype() -> None:
    low, low_tuned = _pair(torch.float16)
    patch = _patch(low, low_tuned)  # taken on float16
    assert {t.dtype for t in patch.tensors.values()} == {"float16"}
    wide = copy.deepcopy(low).float()  # every value fits float16: exact
    report = rws.apply(wide, patch)
    assert report.exact == len(patch.tensors) and len(report.recast) == len(patch.tensors)
    moved = copy.deepcopy(low).float()
    with torch.no_grad():
        moved.conv1.weight.add_(1e-6)  # no longer float16 values: the cast would round them
    with pytest.raises(BaseDtypeMismatchError, match="base is float32, the patch was taken on"):
        rws.apply(moved, patch)
