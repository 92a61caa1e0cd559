"""Corruptions, attacks and ``rws.evaluate`` on CUDA against the CPU (marked ``gpu``).

Skipped without CUDA. ``RWS_GPU_TEST_DEVICE=cpu pytest -m gpu`` runs the same tests with the CPU
standing in for the GPU (every comparison then holds trivially; the code paths run).

- Corruptions, CPU generator: the draws are the same numbers (exactly); the outputs differ only by
  float rounding (different kernels), so the uint8 images agree to one level almost everywhere.
- Corruptions, CUDA generator: other draws from the same distributions, so the corruption's
  per-channel mean and spread over 448 images agree with the CPU's within a tolerance; the same
  seed on the same device gives the same bytes.
- Attacks: robust accuracy on CUDA within 1 point of the CPU's on the same model and inputs.
- ``rws.evaluate`` end to end on CUDA (both generators, bf16, channels-last, compile, auto batch),
  and under ``torchrun`` with NCCL when there are two GPUs.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from rws.models import create_model
from rws.robustness.attacks import attack, list_attacks
from rws.robustness.corruptions import CORRUPTIONS, EXTRA_CORRUPTIONS, _rng, corrupt
from rws.robustness.corruptions.registry import corruption_info
from rws.robustness.evaluate import evaluate
from rws.robustness.inputs import corrupt_cell, quantize
from rws.robustness.report import Report
from rws.runtime.seed import generator
from tests.gpu_device import DEV, DEVICE, GPU_MARKS
from tests.robustness.conftest import photos
from tests.robustness.test_gpu_path import fitted  # noqa: F401  (the tiny trained CNN)

pytestmark = GPU_MARKS
ALL = (*CORRUPTIONS, *EXTRA_CORRUPTIONS)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """448 real 32×32 photos (7 photos × 64): the same images, different draws."""
    return photos(32).repeat(64, 1, 1, 1)


def test_cpu_generator_draws_are_the_same_numbers_on_the_device() -> None:
    like = torch.empty(4, device=DEV)
    for draw in (_rng.uniform, _rng.normal):
        on_dev = draw((1000,), generator(3), like)
        assert on_dev.device.type == DEV.type
        assert torch.equal(on_dev.cpu(), draw((1000,), generator(3), torch.empty(4)))
    ints = _rng.randint((1000,), generator(3), DEV, -5, 5)
    assert torch.equal(ints.cpu(), _rng.randint((1000,), generator(3), torch.device("cpu"), -5, 5))


@pytest.mark.parametrize("name", ALL)
def test_corruption_agrees_with_the_cpu_on_the_cpu_generator(images, name: str) -> None:
    x = images[:56]
    for severity in (1, 3, 5):
        a = quantize(corrupt(x, name, severity, generator=generator(7))).int()
        b = quantize(corrupt(x.to(DEV), name, severity, generator=generator(7))).cpu().int()
        diff = (a - b).abs()
        # float rounding only: one uint8 level at most, almost everywhere
        assert float((diff > 1).float().mean()) <= 1e-3, (name, severity)
        assert float(diff.float().mean()) <= 0.05, (name, severity)


@pytest.mark.parametrize("name", ALL)
def test_corruption_on_the_device_generator_has_the_cpu_distribution(images, name: str) -> None:
    for severity in (2, 5):
        cpu = corrupt(images, name, severity, generator=generator(11)) - images
        dev = (corrupt(images.to(DEV), name, severity, generator=generator(11, DEV)).cpu()
               - images)  # fmt: skip
        for stat in (lambda t: t.mean((0, 2, 3)), lambda t: t.std((0, 2, 3))):
            s_cpu, s_dev = stat(cpu), stat(dev)
            tol = 0.01 + 0.05 * s_cpu.abs()
            assert bool(((s_cpu - s_dev).abs() <= tol).all()), (name, severity, s_cpu, s_dev)
        if not corruption_info(name)["random"]:
            assert float((cpu - dev).abs().max()) <= 2 / 255, name


@pytest.mark.parametrize("name", ALL)
def test_device_generator_is_reproducible(images, name: str) -> None:
    kw = dict(seed=5, batch_size=64, device=DEV, generator="device")
    a = corrupt_cell(images[:128], name, 4, **kw)
    b = corrupt_cell(images[:128], name, 4, **kw)
    assert torch.equal(a, b), name


@pytest.mark.parametrize("method", list_attacks())
def test_attack_robust_accuracy_within_one_point_of_the_cpu(fitted, method: str) -> None:  # noqa: F811
    model, x, y = fitted
    x, y = x[:200], y[:200]
    steps = None if method == "fgsm" else 20
    acc = {}
    for dev in (torch.device("cpu"), DEV):
        m = copy.deepcopy(model).to(dev)
        x_adv = attack(m, x.to(dev), y.to(dev), method, eps=2 / 255, steps=steps,
                       generator=generator(0))  # fmt: skip
        with torch.no_grad():
            ok = (m(x_adv).argmax(1) == y.to(dev)) & (m(x.to(dev)).argmax(1) == y.to(dev))
        acc[dev.type] = float(ok.float().mean())
    assert abs(acc["cpu"] - acc[DEV.type]) <= 0.01, acc


def test_bf16_attack_on_the_device_stays_close(fitted) -> None:  # noqa: F811
    model, x, y = fitted
    m, xd, yd = copy.deepcopy(model).to(DEV), x[:200].to(DEV), y[:200].to(DEV)
    acc = []
    for precision in ("fp32", "bf16"):
        x_adv = attack(m, xd, yd, "pgd", eps=2 / 255, steps=10, precision=precision)
        assert x_adv.dtype == torch.float32
        with torch.no_grad():
            acc.append(float((m(x_adv).argmax(1) == yd).float().mean()))
    assert abs(acc[0] - acc[1]) <= 0.03, acc


EVAL = dict(corruptions=["gaussian_noise", "fog", "jpeg_compression", "glass_blur"],
            severities=(2, 5), attack="pgd", steps=5, eps="2/255", seed=2,
            check_masking=False)  # fmt: skip


def _accuracies(report: Report) -> dict[str, float]:
    return {k: float(v.float().mean()) for k, v in report.base.per_example.items()}


def _close(a: dict[str, float], b: dict[str, float], tol: float) -> bool:
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) <= tol for k in a)


def test_evaluate_on_the_device_agrees_with_the_cpu(fitted) -> None:  # noqa: F811
    model, x, y = fitted
    cpu = evaluate(model, (x, y), **EVAL, device="cpu", generator="cpu")
    dev = evaluate(model, (x, y), **EVAL, device=DEVICE, generator="cpu")
    assert _close(_accuracies(cpu), _accuracies(dev), 0.01)
    assert dev.settings["runtime"]["generator_device"] == "cpu"
    assert dev.settings["device"] == DEV.type
    assert all(p.device.type == "cpu" and p.is_contiguous() for p in model.parameters())


def test_evaluate_device_generator_fast_settings(fitted) -> None:  # noqa: F811
    model, x, y = fitted
    cpu = evaluate(model, (x, y), **EVAL, device="cpu", generator="cpu")
    runs = [evaluate(model, (x, y), **EVAL, device=DEVICE, generator="device") for _ in range(2)]
    fast = evaluate(model, (x, y), **EVAL, device=DEVICE, generator="device", precision="bf16",
                    channels_last=True, compile=DEV.type == "cuda", batch_size="auto")  # fmt: skip
    sha = {r.settings["inputs_sha256"] for r in (*runs, fast)}
    assert len(sha) == 1  # same device and seed: the same images, whatever the forward settings
    assert runs[0].settings["runtime"]["generator_device"] == DEV.type
    assert fast.settings["runtime"]["forward_batch"] >= 256
    assert fast.settings["runtime"]["autocast_dtype"] in ("bfloat16", "float16")
    assert _close(_accuracies(runs[0]), _accuracies(runs[1]), 0.0)
    assert _close(_accuracies(runs[0]), _accuracies(fast), 0.02)
    assert _close(_accuracies(cpu), _accuracies(runs[0]), 0.05)  # other draws, same laws
    assert all(p.device.type == "cpu" and p.is_contiguous() for p in model.parameters())


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_torchrun_nccl_equals_one_process(tmp_path) -> None:
    torch.manual_seed(0)
    model = create_model("small-cnn")
    save_file(model.state_dict(), tmp_path / "m.safetensors")
    args = ["eval", "--arch", "small-cnn", "--weights", str(tmp_path / "m.safetensors"),
            "--corruptions", "fog,gaussian_noise", "--severities", "3", "--attack", "pgd",
            "--steps", "3", "--n-examples", "400", "--batch-size", "64", "--device", "auto"]  # fmt: skip
    run = lambda *cmd: subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # noqa: E731
    one = run(sys.executable, "-m", "rws", *args, "--out", str(tmp_path / "one.json"))
    assert one.returncode == 0, one.stderr
    two = run(sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
              "-m", "rws", *args, "--out", str(tmp_path / "two.json"))  # fmt: skip
    assert two.returncode == 0, two.stderr
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert b["settings"]["world_size"] == 2 and a["settings"]["world_size"] == 1
    assert a["settings"]["inputs_sha256"] == b["settings"]["inputs_sha256"]
    assert a["variants"] == b["variants"]
