"""Fixtures of the recipe tests: the digits data and the conftest's CNN adversarially trained
inside the test session (module robust criticality, the α search, RiFT and interpolation)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import rws
from rws.data import ImageDataset, Split
from rws.training import TrainConfig, TrainResult, finetune
from tests.conftest import Trained, run  # noqa: F401  (run: re-exported to the recipe tests)

EPS = 8 / 255


def pgd_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 5) -> float:
    g = torch.Generator().manual_seed(0)
    xa = rws.attack(model, x, y, "pgd", eps=EPS, steps=steps, generator=g)
    with torch.no_grad():
        return float((model.eval()(xa).argmax(1) == y).float().mean())


@pytest.fixture(scope="session")
def small(digits: ImageDataset) -> ImageDataset:
    """384 training and all 270 validation digits."""
    tr = digits.train
    return ImageDataset("digits-small", Split(tr.x[:384], tr.y[:384]), digits.val,
                        digits.test, num_classes=10)  # fmt: skip


@pytest.fixture(scope="session")
def at(trained: Trained, digits: ImageDataset) -> tuple[nn.Module, TrainResult]:
    """The conftest's clean CNN, adversarially trained for 2 epochs (PGD-3, ε = 8/255)."""
    model = copy.deepcopy(trained.clean)
    cfg = TrainConfig(epochs=2, lr=1e-3, optimizer="adam", schedule="constant", batch_size=64,
                      seed=0, attack="pgd", eps=EPS, attack_steps=3, keep_best=True,
                      device="cpu")  # fmt: skip
    res = finetune(model, digits, cfg)
    return res.model, res


@pytest.fixture(scope="session")
def files(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the clean and tuned CNNs as ``clean.safetensors``, ``tuned.safetensors``."""
    folder = tmp_path_factory.mktemp("recipes")
    save_file(trained.clean.state_dict(), folder / "clean.safetensors")
    save_file(trained.tuned.state_dict(), folder / "tuned.safetensors")
    return folder


@pytest.fixture(scope="session")
def at_files(at: tuple, files: Path) -> Path:
    """:func:`files` plus the adversarially trained CNN as ``at.safetensors``."""
    save_file(at[0].state_dict(), files / "at.safetensors")
    return files
