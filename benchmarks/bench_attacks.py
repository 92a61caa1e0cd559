"""rws's attacks vs torchattacks on the same small-cnn and the same inputs: undefended, then AT.

Run: ``python benchmarks/bench_attacks.py [--at-checkpoint PATH] [--skip-undefended]``. Needs
``pip install --no-deps torchattacks`` (not an rws dependency). Prints the median time of each
implementation over REPEATS interleaved runs, the time ratio rws / torchattacks (goal ≤ 1.0) and
the robust accuracy each leaves (goal: rws's no higher).

Part 1, undefended: PGD-10 and APGD-CE-100 on the digits CNN (both reach 0 % at 8/255). Part 2,
adversarially trained: the same CNN after PGD-10 adversarial training at 8/255 (rws's own
``finetune`` with ``attack="pgd"``, as ``rws advtrain --weights clean --epochs 5 --lr 0.01
--batch-size 64``; seed 0), where attacks differ: PGD-10, APGD-CE, APGD-DLR and APGD-T (9 targets)
at 100 steps against torchattacks' ``APGD``/``APGDT``, rws's PMA (2 rounds of 100 steps), and the
worst case per example over rws's attacks, on the first ``AT_IMAGES`` (env, default 300) test
images. ``--at-checkpoint PATH`` reuses (or first writes) the AT weights.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F
import torchattacks

from rws.data import load_digits
from rws.models import create_model, load_model
from rws.robustness.attacks import attack
from rws.training import TrainConfig, finetune

SEED = 0
EPOCHS = 8
N_IMAGES = 450  # the whole digits test split
EPSILONS = (
    2 / 255,
    8 / 255,
)  # 8/255 is the convention; at 2/255 the undefended CNN keeps some accuracy
REPEATS = {"PGD-10": 7, "APGD-CE-100": 3}
AT_EPS = 8 / 255
AT_EPOCHS = 5
# On the AT model few examples leave the batch early: APGD-100 costs ≈ 10 PGD-10 and APGD-T nine
# times that. The first AT_IMAGES test images, one run each but PGD-10 (≈ 5 min for this table)
AT_IMAGES = int(os.environ.get("AT_IMAGES", "300"))
AT_REPEATS = {"PGD-10": 3, "APGD-CE-100": 1, "APGD-DLR-100": 1, "APGD-T-100": 1, "PMA-100": 1}
HEADER = (
    f"{'attack':<14}{'eps':>7}{'rws s':>9}{'peer s':>9}{'ratio':>8}{'rws acc':>10}{'peer acc':>10}"
)


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


def robust(model: torch.nn.Module, x_adv: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
    """(N,) bool: right on the clean and on the attacked image."""
    with torch.no_grad():
        return (model(x_adv).argmax(1) == y) & (model(x).argmax(1) == y)


def compare(model, x, y, eps, name, ours, peer, repeats):
    """One table row: rws (``ours``: attack() kwargs) vs ``peer`` (a torchattacks attack or None),
    interleaved; returns the row and rws's per-example robustness of the first repetition."""
    t_rws, t_peer, acc_rws, acc_peer, first = [], [], [], [], None
    for rep in range(repeats):
        t0 = time.perf_counter()
        x_adv = attack(model, x, y, eps=eps, generator=torch.Generator().manual_seed(rep), **ours)
        t_rws.append(time.perf_counter() - t0)
        ok = robust(model, x_adv, x, y)
        first = ok if first is None else first
        acc_rws.append(float(ok.float().mean()))
        if peer is not None:
            t0 = time.perf_counter()
            x_peer = peer(x, y)
            t_peer.append(time.perf_counter() - t0)
            acc_peer.append(float(robust(model, x_peer, x, y).float().mean()))
    a = statistics.median(t_rws)
    if peer is None:
        cells = f"{a:>8.2f}{'—':>9}{'—':>8}{statistics.median(acc_rws):>10.2%}{'—':>10}"
    else:
        b = statistics.median(t_peer)
        cells = (f"{a:>8.2f}{b:>9.2f}{a / b:>8.2f}{statistics.median(acc_rws):>10.2%}"
                 f"{statistics.median(acc_peer):>10.2%}")  # fmt: skip
    return f"{name:<14}{eps * 255:>5.0f}/255{cells}", first


def undefended(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    print(f"undefended small-cnn, clean accuracy {accuracy(model, x, y):.2%}")
    print(HEADER)
    print("-" * len(HEADER))
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
            print(compare(model, x, y, eps, name, ours[name], peer, REPEATS[name])[0], flush=True)


def adversarially_trained(clean: torch.nn.Module, checkpoint: str | None) -> torch.nn.Module:
    """PGD-10 AT at 8/255 from the clean model (rws's finetune, seed 0), or ``checkpoint``."""
    if checkpoint and os.path.exists(checkpoint):
        print(f"AT model: {checkpoint}")
        return load_model("small-cnn", checkpoint, 10)
    cfg = TrainConfig(epochs=AT_EPOCHS, lr=0.01, batch_size=64, seed=SEED, attack="pgd", eps=AT_EPS,
                      attack_steps=10, keep_best=True, device="cpu")  # fmt: skip
    t0 = time.perf_counter()
    res = finetune(clean, load_digits(), cfg)
    kept = next(h for h in res.history if h.epoch == res.best_epoch)
    print(f"AT model: {AT_EPOCHS} epochs of PGD-10 AT at 8/255 from the clean model, "
          f"{time.perf_counter() - t0:.0f} s; kept epoch {kept.epoch} (validation clean "
          f"{kept.val_clean_acc:.2%}, PGD {kept.val_acc:.2%})")  # fmt: skip
    if checkpoint:
        from safetensors.torch import save_file

        save_file(res.model.state_dict(), checkpoint)
        print(f"wrote {checkpoint}")
    return res.model.eval()


def at_table(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    eps, x, y = AT_EPS, x[:AT_IMAGES], y[:AT_IMAGES]
    print(f"\nadversarially trained small-cnn, first {len(y)} test images, clean accuracy "
          f"{accuracy(model, x, y):.2%}; medians of {AT_REPEATS} repetitions")  # fmt: skip
    print(HEADER)
    print("-" * len(HEADER))
    apgd = dict(norm="Linf", eps=eps, steps=100, n_restarts=1, seed=SEED)
    rows = [
        ("PGD-10", dict(method="pgd", steps=10),
         torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / 10, steps=10, random_start=True)),
        ("APGD-CE-100", dict(method="apgd", steps=100), torchattacks.APGD(model, loss="ce", **apgd)),
        ("APGD-DLR-100", dict(method="apgd-dlr", steps=100),
         torchattacks.APGD(model, loss="dlr", **apgd)),
        ("APGD-T-100", dict(method="apgd-t", steps=100),
         torchattacks.APGDT(model, n_classes=10, **apgd)),
        ("PMA-100", dict(method="pma", steps=100), None),
    ]  # fmt: skip
    worst = torch.ones_like(y, dtype=torch.bool)
    for name, ours, peer in rows:
        line, ok = compare(model, x, y, eps, name, ours, peer, AT_REPEATS[name])
        worst &= ok
        print(line, flush=True)
    print(f"{'worst case':<14}{eps * 255:>5.0f}/255{'':>34}{float(worst.float().mean()):>10.2%}"
          "   (per example over rws's rows, first repetition)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--at-checkpoint", help="AT weights to reuse; written here if missing")
    parser.add_argument("--skip-undefended", action="store_true", help="only the AT table")
    args = parser.parse_args()
    model, x, y = train()
    print(f"small-cnn on digits, {len(y)} test images")
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, torchattacks {torchattacks.__version__}, {threads} threads")
    print(f"medians of {REPEATS} interleaved repetitions (rws, peer, rws, peer, ...)\n")
    if not args.skip_undefended:
        undefended(model, x, y)
    at_table(adversarially_trained(model, args.at_checkpoint), x, y)


if __name__ == "__main__":
    main()
