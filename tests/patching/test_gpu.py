"""extract / apply / remove / ``rws.patched`` on CUDA modules (marked ``gpu``).

Skipped without CUDA; ``RWS_GPU_TEST_DEVICE=cpu pytest -m gpu`` runs them with the CPU standing
in. A patch made from CUDA modules is the patch made from their CPU copies (codecs encode on the
CPU), and patching a CUDA module lands within one float32 rounding of patching its CPU copy
(elementwise float arithmetic may fuse differently on the device), leaves every tensor on the
device, and ``patched`` restores it bit for bit.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import rws
from rws.models import create_model
from tests.conftest import within_one_rounding
from tests.gpu_device import DEV, DEVICE, GPU_MARKS

pytestmark = GPU_MARKS


@pytest.fixture(scope="module")
def pair() -> tuple[nn.Module, nn.Module]:
    """A small CNN and a copy whose weights and BatchNorm statistics moved a little."""
    torch.manual_seed(0)
    clean = create_model("small-cnn").eval()
    tuned = copy.deepcopy(clean)
    with torch.no_grad():
        for name, t in (*tuned.named_parameters(), *tuned.named_buffers()):
            if t.is_floating_point():
                t.add_(0.01 * torch.randn_like(t))
                if name.endswith("running_var"):
                    t.abs_()
    return clean, tuned


def _on(model: nn.Module, dev: torch.device) -> nn.Module:
    return copy.deepcopy(model).to(dev)


@pytest.mark.parametrize("codec", ["fp32", "fp16", "int8"])
def test_extract_from_device_modules_equals_extract_from_cpu(pair, codec: str) -> None:
    clean, tuned = pair
    on_cpu = rws.extract(clean, tuned, codec=codec, device="cpu")
    on_dev = rws.extract(_on(clean, DEV), _on(tuned, DEV), codec=codec, device=DEVICE)
    assert on_dev.fingerprint() == on_cpu.fingerprint()
    assert list(on_dev.tensors) == list(on_cpu.tensors)
    for name in on_cpu.tensors:
        assert torch.equal(on_dev.delta(name).cpu(), on_cpu.delta(name)), name


@pytest.mark.parametrize("codec", ["fp32", "int8"])
def test_apply_and_remove_on_a_device_module(pair, codec: str) -> None:
    clean, tuned = pair
    patch = rws.extract(clean, tuned, codec=codec, device="cpu")
    ref = _on(clean, torch.device("cpu"))
    rws.apply(ref, patch, device="cpu")
    model = _on(clean, DEV)
    report = rws.apply(model, patch, device=DEVICE)
    assert report.touched == len(patch.tensors) and not report.mismatched
    patched_state = {k: v.clone() for k, v in model.state_dict().items()}
    for k, v in model.state_dict().items():
        assert v.device.type == DEV.type, k
        base = clean.state_dict()[k]
        if v.is_floating_point():
            assert within_one_rounding(v.cpu(), ref.state_dict()[k], base), k
    rws.remove(model, patch)
    for k, v in model.state_dict().items():
        assert v.device.type == DEV.type, k
        if v.is_floating_point():
            assert within_one_rounding(v.cpu(), clean.state_dict()[k], patched_state[k].cpu()), k


def test_patched_on_a_device_module_restores_bit_for_bit(pair) -> None:
    clean, tuned = pair
    patch = rws.extract(clean, tuned, codec="int8", device="cpu")
    model = _on(clean, DEV)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with rws.patched(model, (patch, 0.5)), torch.no_grad():
        assert not torch.equal(model.conv1.weight, before["conv1.weight"])
        out_dev = model(x.to(DEV)).cpu()
    ref = _on(clean, torch.device("cpu"))
    with rws.patched(ref, (patch, 0.5)), torch.no_grad():
        out_cpu = ref(x)
    torch.testing.assert_close(out_dev, out_cpu, rtol=1e-4, atol=1e-4)
    for k, v in model.state_dict().items():
        assert v.device.type == DEV.type and torch.equal(v, before[k]), k
    with pytest.raises(RuntimeError, match="boom"), rws.patched(model, patch):
        raise RuntimeError("boom")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
