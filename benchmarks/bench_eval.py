"""Throughput of a full corruption evaluation: ResNet-18, all 15 corruptions × 5 severities.

``rws.robustness.evaluate.evaluate`` on N synthetic 32×32 images (smooth random fields, not
noise, so the blur/weather kernels do real work): the inputs are corrupted once and cached as uint8,
then the model sees the clean set and all 75 corrupted sets. Printed: wall time, images evaluated per
second (N × 76 forwards), and for comparison the forward-only rate of the bare model on the same
device (the ceiling the engine approaches when corruption generation is cheap).

Run: ``python benchmarks/bench_eval.py`` (``BENCH_N``, ``BENCH_DEVICE``, ``BENCH_THREADS``, ``BENCH_AMP``).
"""

from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F

from rws.models import create_model
from rws.robustness.corruptions import CORRUPTIONS
from rws.robustness.evaluate import evaluate

DEVICE = os.environ.get("BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")
N = int(os.environ.get("BENCH_N", 10000 if DEVICE.startswith("cuda") else 200))
BATCH = int(os.environ.get("BENCH_BATCH", 1000 if DEVICE.startswith("cuda") else 100))
THREADS = int(os.environ.get("BENCH_THREADS", 1))  # a shared CPU: extra OpenMP threads only spin
AMP = os.environ.get("BENCH_AMP", "0") == "1"
ARCH = "resnet18"
SEED = 0


def synthetic_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, 3, 32, 32)`` smooth colour fields in [0, 1] (upsampled 8×8 noise) and random labels."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 8, 8, generator=g)
    x = F.interpolate(coarse, size=(32, 32), mode="bicubic", align_corners=False).clamp(0, 1)
    return x, torch.randint(0, 10, (n,), generator=g)


def forward_rate(model: torch.nn.Module, x: torch.Tensor, device: str) -> float:
    """Images/s of bare forward passes (two batches after a warm-up)."""
    model = model.to(device).eval()
    xb = x[:BATCH].to(device)
    with torch.no_grad(), torch.autocast(device.split(":")[0], enabled=AMP):
        model(xb)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(2):
            model(xb)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return 2 * len(xb) / (time.perf_counter() - t)


def main() -> None:
    torch.set_num_threads(THREADS)
    x, y = synthetic_images(N, SEED)
    model = create_model(ARCH).eval()
    name = torch.cuda.get_device_name() if DEVICE.startswith("cuda") else f"cpu ({THREADS} thread)"
    print(f"{ARCH}, {N} images 32×32, {len(CORRUPTIONS)} corruptions × 5 severities, "
          f"batch {BATCH}, device {name}, amp {AMP}, torch {torch.__version__}")  # fmt: skip
    bare = forward_rate(model, x, DEVICE)
    t = time.perf_counter()
    report = evaluate(model, (x, y), corruptions="all", batch_size=BATCH, device=DEVICE, amp=AMP,
                      seed=SEED, progress=False)  # fmt: skip
    wall = time.perf_counter() - t
    forwards = N * (1 + 5 * len(CORRUPTIONS))
    print(f"full evaluation: {wall:.1f} s for {forwards:,} image evaluations "
          f"({N:,} clean + {N * 75:,} corrupted, generated in the same run)")  # fmt: skip
    print(f"  rws eval throughput: {forwards / wall:,.0f} images/s")
    print(
        f"  bare forward passes: {bare:,.0f} images/s (ceiling; ratio {forwards / wall / bare:.2f})"
    )
    print(f"  mean corruption accuracy of the untrained model: {report.base.mean_corruption:.3f}")


if __name__ == "__main__":
    main()
