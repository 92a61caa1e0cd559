"""Make two real checkpoints for the CLI tour: a small CNN trained on the built-in digits data
(``clean.safetensors``) and a copy fine-tuned on Gaussian-noise digits (``noise.safetensors``).

    python examples/digits_checkpoints.py [OUT_DIR]      # ~20 s on 2 CPU cores
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from rws.data import load_digits
from rws.models import create_model
from rws.robustness.corruptions import corrupt


def train(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, seed: int
) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), 32):
            b = perm[i : i + 32]
            loss = nn.functional.cross_entropy(model(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    data = load_digits()
    clean = train(create_model("small-cnn"), data.train.x, data.train.y, epochs=8, lr=3e-3, seed=0)
    g = torch.Generator().manual_seed(1)
    noisy_train = corrupt(data.train.x, "gaussian_noise", 5, generator=g)
    noisy_test = corrupt(data.test.x, "gaussian_noise", 5, generator=g)
    tuned = train(copy.deepcopy(clean), noisy_train, data.train.y, epochs=3, lr=1e-3, seed=1)
    save_file(clean.state_dict(), out / "clean.safetensors")
    save_file(tuned.state_dict(), out / "noise.safetensors")
    for name, m in (("clean", clean), ("noise", tuned)):
        print(f"{name}.safetensors: clean test acc {accuracy(m, data.test.x, data.test.y):.3f}, "
              f"gaussian_noise-5 acc {accuracy(m, noisy_test, data.test.y):.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
