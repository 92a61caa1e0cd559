"""Shared fixtures of the training tests: digits, a tiny split, a clean model trained once."""

from __future__ import annotations

import pytest
import torch

from rws.data import ImageDataset, Split
from rws.robustness.corruptions import corrupt
from rws.training import TrainConfig, TrainResult, finetune, init_model
from tests.conftest import accuracy  # noqa: F401  (re-exported to the training tests)


@pytest.fixture(scope="session")
def tiny(digits: ImageDataset) -> ImageDataset:
    """192 training and 64 validation digits: enough to exercise every code path quickly."""
    tr, va = digits.train, digits.val
    return ImageDataset("digits-tiny", Split(tr.x[:192], tr.y[:192]), Split(va.x[:64], va.y[:64]),
                        Split(va.x[:0], va.y[:0]), num_classes=10)  # fmt: skip


@pytest.fixture(scope="session")
def noisy_test(digits: ImageDataset) -> torch.Tensor:
    return corrupt(digits.test.x, "gaussian_noise", 5, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def clean(digits: ImageDataset) -> TrainResult:
    """From the seeded initialisation: Adam 3e-3, cosine, batch 32, 6 epochs (≈ 92% test)."""
    cfg = TrainConfig(epochs=6, lr=3e-3, optimizer="adam", schedule="cosine", batch_size=32,
                      seed=0, device="cpu")  # fmt: skip
    return finetune(init_model("small-cnn", 10, seed=0), digits, cfg)


def tiny_config(**kw) -> TrainConfig:
    """3 epochs on noise and fog at severities 3–5, seed 7, on the CPU."""
    base = dict(epochs=3, lr=0.05, batch_size=32, corruptions=("gaussian_noise", "fog"),
                severity=(3, 5), seed=7, device="cpu")  # fmt: skip
    return TrainConfig(**{**base, **kw})


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Bit-identical state dicts."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
