"""PGD-10 and APGD-CE-100: rws vs torchattacks on the same trained small-cnn and the same inputs.

Run: ``python benchmarks/bench_attacks.py``. Needs ``pip install --no-deps torchattacks`` (not an rws
dependency). Prints the median time of each implementation over REPEATS interleaved runs, the time
ratio rws / torchattacks (goal ≤ 1.0) and the robust accuracy each leaves (goal: rws's no higher).
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
import torchattacks

from rws.data import load_digits
from rws.models import create_model
from rws.robustness.attacks import attack

SEED = 0
EPOCHS = 8
N_IMAGES = 450  # the whole digits test split
EPSILONS = (
    2 / 255,
    8 / 255,
)  # 8/255 is the convention; at 2/255 the undefended CNN keeps some accuracy
REPEATS = {"PGD-10": 7, "APGD-CE-100": 3}


def train() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(SEED)
    data = load_digits()
    model = create_model("small-cnn")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(SEED)
    for _ in range(EPOCHS):
        model.train()
        perm = torch.randperm(len(data.train), generator=order)
        for i in range(0, len(perm), 32):
            b = perm[i : i + 32]
            loss = F.cross_entropy(model(data.train.x[b]), data.train.y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), data.test.x[:N_IMAGES], data.test.y[:N_IMAGES]


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def main() -> None:
    model, x, y = train()
    print(f"small-cnn on digits, {len(y)} test images, clean accuracy {accuracy(model, x, y):.2%}")
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, torchattacks {torchattacks.__version__}, {threads} threads")
    print(f"medians of {REPEATS} interleaved repetitions (rws, peer, rws, peer, ...)\n")
    header = f"{'attack':<14}{'eps':>7}{'rws s':>9}{'peer s':>9}{'ratio':>8}{'rws acc':>10}{'peer acc':>10}"
    print(header)
    print("-" * len(header))
    for eps in EPSILONS:
        peers = {
            "PGD-10": torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=10, random_start=True),
            "APGD-CE-100": torchattacks.APGD(
                model, norm="Linf", eps=eps, steps=100, n_restarts=1, loss="ce", seed=SEED
            ),
        }
        ours = {
            "PGD-10": dict(method="pgd", steps=10, step_size=eps / 4),
            "APGD-CE-100": dict(method="apgd", steps=100),
        }
        for name, peer in peers.items():
            t_rws, t_peer, acc_rws, acc_peer = [], [], [], []
            for rep in range(REPEATS[name]):
                t0 = time.perf_counter()
                gen = torch.Generator().manual_seed(rep)
                x_adv = attack(model, x, y, eps=eps, generator=gen, **ours[name])
                t_rws.append(time.perf_counter() - t0)
                acc_rws.append(accuracy(model, x_adv, y))
                t0 = time.perf_counter()
                x_peer = peer(x, y)
                t_peer.append(time.perf_counter() - t0)
                acc_peer.append(accuracy(model, x_peer, y))
            a, b = statistics.median(t_rws), statistics.median(t_peer)
            print(
                f"{name:<14}{eps * 255:>5.0f}/255{a:>8.2f}{b:>9.2f}{a / b:>8.2f}"
                f"{statistics.median(acc_rws):>10.2%}{statistics.median(acc_peer):>10.2%}"
            )


if __name__ == "__main__":
    main()
