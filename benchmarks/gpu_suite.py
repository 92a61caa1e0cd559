"""One prepared GPU benchmark: CIFAR-10-C-sized evaluation, attacks vs torchattacks, CPU-vs-GPU agreement.

Run on one GPU (≤ 8 min; every part also prints a progress line to stderr as it finishes):

    python benchmarks/gpu_suite.py --json gpu_suite.json

``--small`` runs the same code on the CPU at much smaller sizes and with the small CNN instead of
ResNet-18 (≤ 3 min; ``--arch resnet18`` to keep it); ``--tiny`` is the test suite's
(tests/test_gpu_suite.py). Parts, in one table on stdout:

(a) ``rws.evaluate`` of ResNet-18 on N 32×32 images × the 15 corruptions × 5 severities + clean
    (N = 10,000: 760,000 forwards), per precision: total seconds (inputs built on the device,
    forwards, digests) and images/s. ``batch_size="auto"``, channels-last and the CUDA generator on a
    GPU, and once more at the first precision with the CPU generator; ``--compile`` adds
    ``torch.compile``.
(b) PGD-10 (step 2/255) and APGD-CE-100 at ε = 8/255 on N images: seconds and robust accuracy for
    rws's ``attack`` and, when installed, torchattacks' ``PGD``/``APGD`` on the same model, inputs
    and batches (fp32 both).
(c) agreement of the device with the CPU: each corruption at severity 3 with the CPU generator
    (share of uint8 values more than one level apart, the mean gap in levels) and with the device
    generator (largest gap of a per-channel mean of the corruption), and PGD-10 / APGD-CE-100
    robust accuracy on the device vs the CPU (CPU generator both). On a CPU-only run the CPU stands
    in for the device (the comparison then holds trivially; the code runs).

The model is ResNet-18 (``rws.models``, CIFAR stem) trained briefly on the digits data
(``load_digits``, 32×32, its train split: Adam 3e-3, batches of 32, 6 passes, seed 0); the N
images are the digits test split (450 images) repeated to N: a throughput benchmark, not an
accuracy one. ``--budget-s`` skips what is left once the time is spent (so a short timeout still
leaves a table).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rws.data import load_digits
from rws.models import create_model
from rws.robustness.attacks import attack
from rws.robustness.corruptions import CORRUPTIONS, corrupt
from rws.robustness.evaluate import evaluate
from rws.robustness.inputs import quantize
from rws.runtime.device import resolve_device
from rws.runtime.seed import generator

SEED = 0
EPS = 8 / 255


@dataclass(frozen=True)
class Size:
    arch: str
    n: int  # images in (a) and (b)
    epochs: int
    train_images: int
    severities: tuple[int, ...]
    attack_batch: int
    agree_images: int  # (c) corruptions
    agree_attack: int  # (c) attacks
    precisions: tuple[str, ...]


SIZES = {
    "full": Size("resnet18", 10_000, 6, 100_000, (1, 2, 3, 4, 5), 1000, 256, 128,
                 ("bf16", "fp32", "fp16")),
    "small": Size("small-cnn", 64, 3, 10_000, (1, 2, 3, 4, 5), 64, 32, 16, ("fp32", "bf16")),
    "tiny": Size("small-cnn", 4, 1, 64, (1, 3, 5), 4, 4, 4, ("fp32", "bf16")),
}  # fmt: skip


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn: Callable[[], Any], dev: torch.device) -> tuple[float, Any]:
    sync(dev)
    t0 = time.perf_counter()
    out = fn()
    sync(dev)
    return time.perf_counter() - t0, out


def train(size: Size, dev: torch.device) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The model, trained briefly on digits, and the test images repeated to ``size.n``."""
    data = load_digits()
    torch.manual_seed(SEED)
    model = create_model(size.arch).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(SEED)
    xs, ys = data.train.x.to(dev), data.train.y.to(dev)
    seen = 0
    model.train()
    for _ in range(size.epochs):
        perm = torch.randperm(len(ys), generator=order).to(dev)
        for i in range(0, len(perm), 32):
            b = perm[i : i + 32]
            loss = F.cross_entropy(model(xs[b]), ys[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(b)
            if seen >= size.train_images:
                break
    reps = -(-size.n // len(data.test.y))
    x = data.test.x.repeat(reps, 1, 1, 1)[: size.n].contiguous()
    y = data.test.y.repeat(reps)[: size.n].contiguous()
    return model.eval().cpu(), x, y


def part_a(model, x, y, size, dev, precision, compile_model, place="device") -> dict[str, Any]:
    cuda = dev.type == "cuda"
    kw = dict(corruptions="all", severities=size.severities, device=str(dev), precision=precision,
              channels_last=cuda, compile=compile_model, batch_size="auto" if cuda else 256,
              check_masking=False, generator=place, seed=SEED)  # fmt: skip
    secs, report = timed(lambda: evaluate(model, (x, y), **kw), dev)
    images = len(y) * (1 + len(CORRUPTIONS) * len(size.severities))
    rt = report.settings["runtime"]
    return {"part": "a", "what": f"eval {size.arch} {len(y)}×(1+15×{len(size.severities)})",
            "setting": f"{precision} batch {rt['forward_batch']} gen {rt['generator_device']}",
            "seconds": secs, "rate": images / secs,
            "accuracy": f"clean {report.base.clean:.1%} corr {report.base.mean_corruption:.1%}"}  # fmt: skip


def _robust(model: nn.Module, x_adv: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(((model(x_adv).argmax(1) == y) & (model(x).argmax(1) == y)).float().mean())


def _chunked(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x, y, batch: int):
    return torch.cat([fn(x[i : i + batch], y[i : i + batch]) for i in range(0, len(y), batch)])


def part_b(model, x, y, size, dev) -> list[dict[str, Any]]:
    try:
        import torchattacks
    except ImportError:
        torchattacks = None
    model = model.to(dev)
    xd, yd = x.to(dev), y.to(dev)
    rows = []
    specs = {
        "PGD-10": (dict(method="pgd", steps=10, step_size=2 / 255),
                   lambda: torchattacks.PGD(model, eps=EPS, alpha=2 / 255, steps=10,
                                            random_start=True)),
        "APGD-CE-100": (dict(method="apgd", steps=100),
                        lambda: torchattacks.APGD(model, norm="Linf", eps=EPS, steps=100,
                                                  n_restarts=1, loss="ce", seed=SEED)),
    }  # fmt: skip
    for name, (ours, peer) in specs.items():
        run = lambda ours=ours: attack(model, xd, yd, eps=EPS, generator=generator(SEED, dev),  # noqa: E731
                                       batch_size=size.attack_batch, **ours)  # fmt: skip
        secs, adv = timed(run, dev)
        row = {"part": "b", "what": f"{name} on {len(y)}", "setting": "rws fp32",
               "seconds": secs, "rate": len(y) / secs, "accuracy": _robust(model, adv, xd, yd)}  # fmt: skip
        if torchattacks is not None:
            atk = peer()
            p_secs, p_adv = timed(lambda: _chunked(atk, xd, yd, size.attack_batch), dev)  # noqa: B023
            row.update(peer_seconds=p_secs, peer_accuracy=_robust(model, p_adv, xd, yd))
        rows.append(row)
        log(f"(b) {name}: {row}")
    model.cpu()
    return rows


def part_c(model, x, y, size, dev) -> list[dict[str, Any]]:
    xs = x[: size.agree_images]
    far, gap, law = {}, {}, {}
    for name in CORRUPTIONS:
        a = quantize(corrupt(xs, name, 3, generator=generator(SEED))).int()
        b = quantize(corrupt(xs.to(dev), name, 3, generator=generator(SEED))).cpu().int()
        far[name] = float(((a - b).abs() > 1).float().mean())
        gap[name] = float((a - b).abs().float().mean())
        on_cpu = corrupt(xs, name, 3, generator=generator(SEED)) - xs
        on_dev = corrupt(xs.to(dev), name, 3, generator=generator(SEED, dev)).cpu() - xs
        law[name] = float((on_cpu.mean((0, 2, 3)) - on_dev.mean((0, 2, 3))).abs().max())
    worst = max(far, key=far.get)
    widest = max(law, key=law.get)
    label = f"{dev.type} vs cpu" + (" (cpu stands in)" if dev.type == "cpu" else "")
    rows = [
        {"part": "c", "what": "15 corruptions, CPU generator", "setting": label,
         "accuracy": f"worst >1 level {far[worst]:.2e} ({worst}), mean gap ≤ "
                     f"{max(gap.values()):.3f} levels"},
        {"part": "c", "what": "15 corruptions, device generator", "setting": label,
         "accuracy": f"largest channel-mean gap {law[widest]:.4f} ({widest})"},
    ]  # fmt: skip
    xa, ya = x[: size.agree_attack], y[: size.agree_attack]
    for name, kw in (("PGD-10", dict(method="pgd", steps=10, step_size=2 / 255)),
                     ("APGD-CE-100", dict(method="apgd", steps=100))):  # fmt: skip
        acc = []
        for d in (torch.device("cpu"), dev):
            m = model.to(d)
            adv = attack(m, xa.to(d), ya.to(d), eps=EPS, generator=generator(SEED), **kw)
            acc.append(_robust(m, adv, xa.to(d), ya.to(d)))
        model.cpu()
        rows.append({"part": "c", "what": f"{name} on {len(ya)}", "setting": label,
                     "accuracy": f"robust cpu {acc[0]:.1%} {dev.type} {acc[1]:.1%}"})  # fmt: skip
    rows.append({"part": "c", "what": "corruption detail", "setting": label,
                 "detail": {"far": far, "gap": gap, "law": law}})  # fmt: skip
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'':<2}{'what':<34}{'setting':<30}{'s':>9}{'img/s':>11}  {'result':<58}"
            f"{'peer s':>8}{'peer acc':>9}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in rows:
        if "detail" in r:
            continue
        acc = r.get("accuracy", "")
        acc = f"robust {acc:.1%}" if isinstance(acc, float) else str(acc)
        secs = f"{r['seconds']:.1f}" if "seconds" in r else "—"
        rate = f"{r['rate']:,.0f}" if "rate" in r else "—"
        ps = f"{r['peer_seconds']:.1f}" if "peer_seconds" in r else "—"
        pa = f"{r['peer_accuracy']:.1%}" if "peer_accuracy" in r else "—"
        lines.append(f"{r['part']:<2}{r['what']:<34}{r['setting']:<30}{secs:>9}{rate:>11}  "
                     f"{acc:<58}{ps:>8}{pa:>9}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--small", action="store_true", help="same code, CPU sizes (≤ 3 min)")
    mode.add_argument("--tiny", action="store_true", help="the test suite's sizes")
    ap.add_argument("--device", default=None, help="auto (full), cpu (--small/--tiny), cuda[:n]")
    ap.add_argument(
        "--arch", default=None, help="the model (resnet18; small-cnn for --small/--tiny)"
    )
    ap.add_argument("--precisions", default=None, help="comma list (default per size)")
    ap.add_argument("--compile", action="store_true", help="torch.compile in (a)")
    ap.add_argument("--budget-s", type=float, default=450.0, help="skip what is left after this")
    ap.add_argument("--json", default=None, help="write the rows here")
    args = ap.parse_args(argv)
    size = SIZES["small" if args.small else "tiny" if args.tiny else "full"]
    size = size if args.arch is None else dataclasses.replace(size, arch=args.arch)
    dev = resolve_device(args.device or ("cpu" if args.small or args.tiny else "auto"))
    precisions = tuple(args.precisions.split(",")) if args.precisions else size.precisions
    start = time.perf_counter()
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    log(f"device {name}, torch {torch.__version__}, sizes {size}")
    model, x, y = train(size, dev)
    log(f"trained {size.arch} in {time.perf_counter() - start:.1f} s")
    if dev.type == "cuda":  # warm-up: CUDA context, cuDNN plans, the probe
        evaluate(model, (x[:512], y[:512]), corruptions="fog", severities=1, device=str(dev),
                 check_masking=False, batch_size="auto")  # fmt: skip
    rows: list[dict[str, Any]] = []
    plan = [("a", p, "device") for p in precisions[:1]] + [("b", None, ""), ("c", None, "")]
    plan += [("a", precisions[0], "cpu")]  # the CPU generator: draws on the CPU, then moved
    plan += [("a", p, "device") for p in precisions[1:]]
    for part, precision, place in plan:
        if time.perf_counter() - start > args.budget_s:
            rows.append(
                {"part": part, "what": "skipped: --budget-s spent", "setting": precision or ""}
            )
            continue
        if part == "a":
            rows.append(part_a(model, x, y, size, dev, precision, args.compile, place))
            log(f"(a) {rows[-1]}")
        elif part == "b":
            rows += part_b(model, x, y, size, dev)
        else:
            rows += part_c(model, x, y, size, dev)
    total = time.perf_counter() - start
    print(f"rws GPU suite on {name}: {size.arch}, {len(y)} images, total {total:.0f} s")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"device": name, "torch": torch.__version__, "total_s": total, "rows": rows},
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
