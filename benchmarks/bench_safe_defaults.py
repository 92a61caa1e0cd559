"""Defaults without validation data (issue 12, item 8): which selection and α is safest?

Without data there is no operating-point search, so ``rws extract --method rws`` must pick its
layers and α blind. Candidates, each measured on the test split (clean accuracy, and mean accuracy
over severities 1–5 of the signature's own corruption; gain share = (patched − clean model) /
(robust model − clean model) on that corruption):

- every layer at α = 1 (the paper's patch, Wc + RWSk),
- every layer at α = 0.5,
- the first 2 layers at α = 1 and at α = 0.5.

Networks: ``rws demo``'s ResNet-20 and small CNN (BatchNorm; their demo checkpoints, trained once
and cached under OUT), and a small CNN **without BatchNorm** (conv-ReLU ×3, global average pool,
linear; Adam fine-tunes from a common origin, as a new user would), trained here on the same
recipe as the demo's small CNN.

    python benchmarks/bench_safe_defaults.py [OUT]
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import torch
from torch import nn

import rws
from rws.data import load_digits
from rws.demo import DemoConfig, run_demo
from rws.models import load_model
from rws.models.layers import Normalize
from rws.training import TrainConfig, finetune

CORRUPTIONS = DemoConfig().corruptions
CANDIDATES = (("all layers, α = 1", None, 1.0), ("all layers, α = 0.5", None, 0.5),
              ("first 2, α = 1", 2, 1.0), ("first 2, α = 0.5", 2, 0.5))  # fmt: skip


class PlainCNN(nn.Module):
    """conv-ReLU ×3 (the last two followed by 2×2 max-pool), global average pool, linear; no BN."""

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.norm = Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.conv3 = nn.Conv2d(2 * width, 4 * width, 3, padding=1)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(self.norm(x)))
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv3(x)), 2)
        return self.fc(x.mean((2, 3)))


def plain_models(data) -> tuple[nn.Module, nn.Module, dict[str, nn.Module]]:
    """Origin (15 epochs), clean and one robust model per corruption (6 epochs each, severities
    3–5), Adam 1e-3 with a cosine schedule and batch 32: the demo's small-CNN recipe, longer and
    slower (without BatchNorm the demo's 6 + 4 epochs at 3e-3 leave the clean model at 72.7 %)."""

    def tc(epochs: int, corruptions: tuple[str, ...], seed: int) -> TrainConfig:
        return TrainConfig(epochs=epochs, lr=1e-3, optimizer="adam", schedule="cosine",
                           batch_size=32, weight_decay=0.0, corruptions=corruptions,
                           severity=(3, 5), seed=seed, device="cpu")  # fmt: skip

    torch.manual_seed(0)
    origin = finetune(PlainCNN(), data, tc(15, (), 0)).model
    clean = finetune(copy.deepcopy(origin), data, tc(6, (), 1)).model
    robust = {k: finetune(copy.deepcopy(origin), data, tc(6, (k,), 2 + i)).model
              for i, k in enumerate(CORRUPTIONS)}  # fmt: skip
    return origin, clean, robust


def demo_models(arch: str, out: Path) -> tuple[nn.Module, nn.Module, dict[str, nn.Module]]:
    d = out / f"demo-{arch}"
    run_demo(d, DemoConfig(arch=arch, search=False, severities=(3,), alphas=(1.0,)))
    load = lambda n: load_model(arch, d / f"{n}.safetensors", 10)  # noqa: E731
    return load("origin"), load("clean"), {k: load(f"robust-{k}") for k in CORRUPTIONS}


def own(v, k: str) -> float:
    return 100 * sum(v.corruptions[k].values()) / len(v.corruptions[k])


def table(name: str, origin: nn.Module, clean: nn.Module, robust: dict[str, nn.Module], data):
    variants: list = []
    for k, model in robust.items():
        variants.append(rws.extract(clean, model, name=f"{k}|robust model"))
        for label, shallow, a in CANDIDATES:
            p = rws.extract(clean, model, method="rws", origin=origin, shallow=shallow, alpha=a,
                            name=f"{k}|{label}")  # fmt: skip
            variants.append(p)
    rep = rws.evaluate(clean, data, corruptions=list(CORRUPTIONS), patches=variants, device="cpu")
    base = rep.base
    print(f"\n## {name}: clean model {100 * base.clean:.1f} % clean (test split)")
    print(f"{'corruption':15} {'variant':22} {'clean':>6} {'cost pt':>8} {'own':>6} {'gain %':>7}")
    costs: dict[str, list[float]] = {label: [] for label, _, _ in CANDIDATES}
    for k in robust:
        gain = own(rep.variant(f"{k}|robust model"), k) - own(base, k)
        for label in ("robust model", *costs):
            v = rep.variant(f"{k}|{label}")
            cost = 100 * (base.clean - v.clean)
            share = 100 * (own(v, k) - own(base, k)) / gain if gain > 0 else float("nan")
            print(f"{k:15} {label:22} {100 * v.clean:6.1f} {cost:8.1f} {own(v, k):6.1f} "
                  f"{share:7.0f}")  # fmt: skip
            if label in costs:
                costs[label].append(cost)
    safest = min(costs, key=lambda lab: max(costs[lab]))
    print(f"-> lowest worst-case clean cost: {safest} ({max(costs[safest]):.1f} pt)")


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/rws-safe-defaults")
    torch.set_num_threads(2)
    data = load_digits()
    t = time.perf_counter()
    table("small CNN without BatchNorm", *plain_models(data), data)
    for arch in ("resnet20", "small-cnn"):
        table(f"rws demo --arch {arch}", *demo_models(arch, out), data)
    print(f"\n({time.perf_counter() - t:.0f} s)")


if __name__ == "__main__":
    main()
