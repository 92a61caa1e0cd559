"""Shared fixtures: environment isolation and tiny real models trained on the digits data."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from rws.data import ImageDataset, load_digits
from rws.models import create_model


@pytest.fixture(autouse=True, scope="session")
def _threads() -> object:
    """The whole suite runs on a fixed number of intra-op threads, ``RWS_TEST_THREADS`` (default
    2, this project's machine's cores): float sums then add up in the same order on every run, so
    runs compare bit for bit. Two threads ran the suite in 443 s where one took 744 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("RWS_TEST_THREADS", "2")))
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _isolate(monkeypatch: pytest.MonkeyPatch) -> None:
    """No colour codes in CLI output, no Hub token, no progress bars."""
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def train(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float, seed: int
) -> nn.Module:
    """Adam, batch 32, fixed seed; returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(perm), 32):
            b = perm[i : i + 32]
            loss = nn.functional.cross_entropy(model(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def digits() -> ImageDataset:
    """The built-in digits data, loaded once per session."""
    return load_digits()


def run(*args: str | Path) -> tuple[int, str, str]:
    """``rws ARGS`` in-process: exit code, stdout, stderr."""
    from typer.testing import CliRunner

    from rws.cli.app import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    return res.exit_code, res.stdout, res.stderr


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` in one eval-mode pass."""
    with torch.no_grad():
        return float((model.eval()(x).argmax(1) == y).float().mean())


def noisy(x: torch.Tensor, sigma: float = 0.3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)


@dataclass
class Trained:
    clean: nn.Module
    tuned: nn.Module  # `clean` fine-tuned on Gaussian-noise data
    x_test: torch.Tensor
    y_test: torch.Tensor
    clean_path: Path  # safetensors
    tuned_path: Path
    clean_pt: Path  # a DataParallel-style {"state_dict": {"module." + name: t}} pickle


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A small CNN trained on digits (~95% test accuracy), then fine-tuned on noisy digits."""
    torch.manual_seed(0)
    data = load_digits()
    clean = train(create_model("small-cnn"), data.train.x, data.train.y, epochs=8, lr=3e-3, seed=0)
    tuned = copy.deepcopy(clean)
    tuned = train(tuned, noisy(data.train.x), data.train.y, epochs=2, lr=1e-3, seed=1)
    folder = tmp_path_factory.mktemp("models")
    clean_path, tuned_path = folder / "clean.safetensors", folder / "tuned.safetensors"
    save_file(clean.state_dict(), clean_path)
    save_file(tuned.state_dict(), tuned_path)
    clean_pt = folder / "clean.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in clean.state_dict().items()}}, clean_pt)
    return Trained(clean, tuned, data.test.x, data.test.y, clean_path, tuned_path, clean_pt)


def within_one_rounding(restored: torch.Tensor, base: torch.Tensor, patched: torch.Tensor) -> bool:
    """|restored − base| ≤ one float32 ulp at the larger of the base and patched magnitudes."""
    scale = torch.maximum(base.double().abs(), patched.double().abs())
    ulp = torch.finfo(torch.float32).eps * scale
    return bool(((restored.double() - base.double()).abs() <= ulp).all())
