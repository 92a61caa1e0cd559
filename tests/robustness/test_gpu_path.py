"""The GPU path's logic, exercised on the CPU: precision, channels-last, generator placement,
background building of the inputs, forward batches, compile plumbing, the CLI options.

The same code runs on CUDA in ``test_gpu.py`` (marked ``gpu``); here the CPU stands in.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import rws.robustness.evaluate as evaluate_module
from rws.data import load_digits
from rws.errors import UsageError
from rws.robustness.attacks import attack
from rws.robustness.config import EvalConfig
from rws.robustness.corruptions import _rng
from rws.robustness.evaluate import evaluate
from rws.robustness.inputs import EvalInputs, corrupt_cell, random_corruption
from rws.runtime.device import channels_last, pinned, probe_batch_size, to_device
from rws.runtime.precision import autocast, autocast_dtype, check_precision
from rws.runtime.seed import generator, generator_device
from tests.conftest import run

CPU = torch.device("cpu")
BASE = dict(corruptions=["gaussian_noise", "jpeg_compression"], severities=(3,), device="cpu",
            check_masking=False, seed=1, n_examples=300)  # fmt: skip


def tiny_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(4),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 16, 10),
    )  # fmt: skip


@pytest.fixture(scope="module")
def fitted() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A tiny CNN trained 2 epochs on digits (> 90 % test accuracy), and the test split."""
    data = load_digits()
    torch.manual_seed(0)
    model = tiny_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        model.train()
        perm = torch.randperm(len(data.train.y), generator=g)
        for i in range(0, len(perm), 32):
            b = perm[i : i + 32]
            loss = nn.functional.cross_entropy(model(data.train.x[b]), data.train.y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), data.test.x, data.test.y


def test_precision_names_and_dtypes() -> None:
    assert autocast_dtype("fp32", CPU) is None
    assert autocast_dtype("bf16", CPU) == torch.bfloat16
    assert autocast_dtype("fp16", CPU) == torch.float16
    with pytest.raises(UsageError) as e:
        check_precision("fp8")
    assert str(e.value) == "unknown precision 'fp8'; choose one of: fp32, bf16, fp16"
    lin = nn.Linear(4, 2)
    with autocast("bf16", CPU) as dtype:
        assert dtype == torch.bfloat16 and lin(torch.ones(1, 4)).dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16), autocast("fp32", CPU) as dtype:
        assert dtype == torch.float32 and lin(torch.ones(1, 4)).dtype == torch.float32


def test_bf16_accuracy_within_two_points_of_fp32(fitted) -> None:
    model, x, y = fitted
    fp32 = evaluate(model, (x, y), **BASE)
    bf16 = evaluate(model, (x, y), **BASE, precision="bf16")
    assert fp32.base.clean > 0.9
    for key in ("clean", "gaussian_noise/3", "jpeg_compression/3"):
        a = fp32.base.per_example[key].float().mean()
        b = bf16.base.per_example[key].float().mean()
        assert abs(float(a - b)) <= 0.02, key
    rt = bf16.settings["runtime"]
    assert rt["precision"] == "bf16" and rt["autocast_dtype"] == "bfloat16"
    assert bf16.settings["inputs_sha256"] == fp32.settings["inputs_sha256"]


def test_channels_last_predicts_identically_and_is_undone(fitted) -> None:
    model, x, y = fitted
    plain = evaluate(model, (x, y), **BASE)
    last = evaluate(model, (x, y), **BASE, channels_last=True)
    for key, t in plain.base.per_example.items():
        assert torch.equal(last.base.per_example[key], t), key
    assert last.settings["runtime"]["channels_last"] is True
    assert all(p.is_contiguous() for p in model.parameters())
    conv = nn.Conv2d(3, 4, 3)
    with channels_last(conv):
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        assert not conv.weight.is_contiguous()
    assert conv.weight.is_contiguous()
    xl = to_device(torch.rand(2, 3, 8, 8), CPU, channels_last=True)
    assert xl.is_contiguous(memory_format=torch.channels_last)


def test_generator_placement() -> None:
    assert generator_device("device", "cuda:1") == torch.device("cuda", 1)
    assert generator_device("cpu", torch.device("cuda", 0)) == CPU
    assert generator_device("device", CPU) == CPU
    with pytest.raises(UsageError) as e:
        generator_device("gpu", CPU)  # type: ignore[arg-type]
    assert str(e.value) == "generator must be 'cpu' or 'device', not 'gpu'"
    with pytest.raises(UsageError):
        EvalConfig(generator="gpu")  # type: ignore[arg-type]
    # draws happen on the generator's device and are then moved: a CPU generator gives the
    # numbers it gives a CPU batch, whatever the batch's device ("meta" stands in for CUDA)
    like = torch.empty(3, device="meta")
    u = _rng.uniform((3,), generator(5), like)
    assert u.device.type == "meta"
    assert torch.equal(
        _rng.uniform((3,), generator(5), torch.empty(3)), torch.rand(3, generator=generator(5))
    )
    x = torch.rand(6, 3, 32, 32, generator=generator(0))
    a = corrupt_cell(x, "shot_noise", 2, seed=3, batch_size=4, generator="cpu")
    b = corrupt_cell(x, "shot_noise", 2, seed=3, batch_size=4, generator="device")
    assert torch.equal(a, b)  # on the CPU both are the CPU generator


def test_random_corruption_draws_on_the_generators_device() -> None:
    x = torch.rand(2, 3, 32, 32, generator=generator(0))
    a = random_corruption(x, ["fog", "contrast"], (1, 5), generator(9))
    b = random_corruption(x, ["fog", "contrast"], (1, 5), generator(9))
    assert torch.equal(a, b)


def test_background_build_equals_synchronous_build(fitted) -> None:
    _, x, y = fitted
    cells = [("gaussian_noise", 2), ("jpeg_compression", 4), ("glass_blur", 1)]
    built = []
    for background in (False, True):
        inp = EvalInputs.for_this_rank(x[:100], y[:100], cells, batch_size=32)
        inp.build(seed=0, params="auto", source=None, device=CPU, advance=lambda n: None,
                  generator="device", background=background)  # fmt: skip
        first = inp.corrupted(cells[1], 2)  # waits for its cell
        inp.wait()
        built.append((inp, first))
    (sync, a), (bg, b) = built
    assert torch.equal(a, b) and bg.digests == sync.digests
    assert all(torch.equal(bg.cache[c], sync.cache[c]) for c in cells)
    assert torch.equal(bg.images(cells[0], range(1, 3)), sync.cache[cells[0]][32:96])
    assert bg.generator_device == "cpu"


def test_background_build_hands_its_error_to_the_readers(fitted, tmp_path) -> None:
    _, x, y = fitted
    inp = EvalInputs.for_this_rank(x[:10], y[:10], [("fog", 1)], batch_size=8)
    inp.build(seed=0, params="auto", source=tmp_path / "missing", device=CPU,
              advance=lambda n: None, background=True)  # fmt: skip
    with pytest.raises(Exception) as e:
        inp.corrupted(("fog", 1), 0)
    with pytest.raises(type(e.value)):
        inp.wait()


def test_auto_batch_on_the_cpu_is_256_and_grouped_forwards_change_nothing(
    fitted, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, x, y = fitted
    assert probe_batch_size(lambda n: None, CPU, start=256, limit=8192) == 256
    fixed = evaluate(model, (x, y), **BASE, batch_size=256)
    auto = evaluate(model, (x, y), **BASE, batch_size="auto")
    assert auto.settings["runtime"]["forward_batch"] == 256
    assert auto.settings["inputs_sha256"] == fixed.settings["inputs_sha256"]
    assert EvalConfig(batch_size="auto").seed_batch == 256
    # as on a GPU where the probe finds room for two batches: one forward of all 300 images
    monkeypatch.setattr(
        evaluate_module, "probe_batch_size", lambda run, dev, start, limit: 2 * start
    )
    grouped = evaluate(model, (x, y), **BASE, batch_size="auto", attack="fgsm")
    assert grouped.settings["runtime"]["forward_batch"] == 512
    for key, t in fixed.base.per_example.items():
        assert torch.equal(grouped.base.per_example[key], t), key
    assert grouped.settings["inputs_seen_sha256"] == {"base": fixed.settings["inputs_sha256"]}
    assert len(grouped.base.per_example["robust/fgsm"]) == 300


def test_compile_wraps_the_forwards_once(fitted, monkeypatch: pytest.MonkeyPatch) -> None:
    model, x, y = fitted
    calls = []

    def fake_compile(m: nn.Module, **kw: object) -> nn.Module:
        calls.append(m)
        return m

    monkeypatch.setattr(torch, "compile", fake_compile)
    report = evaluate(model, (x[:64], y[:64]), **BASE, compile=True)
    assert calls == [model] and report.settings["runtime"]["compile"] is True


def test_attack_precision_keeps_fp32_iterates(fitted) -> None:
    model, x, y = fitted
    xs, ys = x[:64], y[:64]
    eps = 2 / 255
    out = {}
    for precision in ("fp32", "bf16"):
        x_adv = attack(model, xs, ys, "pgd", eps=eps, steps=5, precision=precision)
        assert x_adv.dtype == torch.float32
        assert float((x_adv - xs).abs().max()) <= eps + 1e-6
        with torch.no_grad():
            out[precision] = float((model(x_adv).argmax(1) == ys).float().mean())
    assert abs(out["fp32"] - out["bf16"]) <= 0.05
    with pytest.raises(UsageError, match="unknown precision 'int8'"):
        attack(model, xs, ys, "pgd", precision="int8")  # type: ignore[arg-type]


def test_pinned_is_a_no_op_without_cuda() -> None:
    t = torch.rand(2)
    assert pinned(t, CPU) is t


def test_cli_takes_the_throughput_options(tmp_path) -> None:
    from safetensors.torch import save_file

    from rws.models import create_model

    torch.manual_seed(0)
    weights = tmp_path / "m.safetensors"
    save_file(copy.deepcopy(create_model("small-cnn")).state_dict(), weights)
    args = ["eval", "--arch", "small-cnn", "--weights", weights, "--corruptions", "fog",
            "--severities", "1", "--n-examples", "32", "--device", "cpu"]  # fmt: skip
    code, _, err = run(*args, "--precision", "bf16", "--channels-last", "--generator", "cpu",
                         "--batch-size", "auto", "--out", tmp_path / "r.json")  # fmt: skip
    assert code == 0, err
    from rws.robustness.report import Report

    s = Report.load_json(tmp_path / "r.json").settings
    assert s["config"]["precision"] == "bf16" and s["config"]["batch_size"] == "auto"
    assert s["runtime"]["generator_device"] == "cpu" and s["runtime"]["channels_last"] is True
    code, _, err = run(*args, "--batch-size", "big")
    assert code == 2 and "--batch-size must be a positive integer or auto, not 'big'" in err
    code, _, err = run(*args, "--precision", "fp8")
    assert code == 2 and "fp8" in err
