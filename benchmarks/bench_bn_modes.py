"""BatchNorm handling of RWS signatures, measured: every ``--bn`` mode and BN recalibration
(plain vs α-mixed) on the built-in digits setting, for the demo's small-cnn and a ResNet-20.

Per architecture: ``rws demo``'s origin, clean model and one robust model per corruption (its
recipe: Adam, cosine schedule, robust models on severities 3–5, ResNet-20 with random crops),
trained once under ``OUT``. Per corruption, mode and α ∈ ALPHAS: clean and corrupted (that
corruption, severities 3–5, the fixed copy ``rws eval`` feeds) accuracy on the test split; the
robust model's own numbers beside. Recalibration runs on the training split corrupted by the
same corruption.

Run: ``python benchmarks/bench_bn_modes.py [resnet20|small-cnn]`` (about 10 minutes on 2 CPU
cores for both; the models are cached after).
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import torch

import rws
from rws.data import load_digits
from rws.demo import SHALLOW, DemoConfig, run_demo
from rws.models import load_model
from rws.robustness.inputs import corrupted_inputs
from rws.training import recalibrate_bn
from rws.training.metrics import accuracy

OUT = Path("/tmp/bench_bn_modes")
ARCHS = SHALLOW  # arch -> --shallow K (resnet20: stem + first stage)
CORRUPTIONS = DemoConfig().corruptions
SEVERITY = (3, 5)
ALPHAS = (0.5, 1.0)
MODES = ("average", "replace-all", "delta", "skip")
RECAL = (("average", "recal"), ("average", "recal-mix"))
DEV = torch.device("cpu")


def _models(arch: str) -> tuple:
    """``rws demo``'s origin, clean and robust models for ``arch`` (trained once, then cached)."""
    cfg = DemoConfig(arch=arch, search=False, severities=(3,), alphas=(1.0,))
    out = OUT / arch / "demo"
    run_demo(out, cfg)
    load = lambda name: load_model(arch, out / f"{name}.safetensors", 10)  # noqa: E731
    return load("origin"), load("clean"), {k: load(f"robust-{k}") for k in CORRUPTIONS}


def _acc(model, x) -> float:
    return 100 * accuracy(model, x, DATA.test.y, 256, DEV)


def _row(label: str, model, xc) -> str:
    return f"{label:<26} {_acc(model, DATA.test.x):6.1f} {_acc(model, xc):6.1f}"


def bench(arch: str, shallow: int) -> None:
    t0 = time.time()
    origin, clean, models = _models(arch)
    print(f"\n## {arch} (--shallow {shallow}); clean model: clean {_acc(clean, DATA.test.x):.1f}")
    for k, robust in models.items():
        xc = corrupted_inputs(DATA.test.x, [k], SEVERITY, seed=0)
        print(f"\n{k}: {'variant':<26} {'clean':>6} {'corr.':>6}")
        print(" " * len(k), _row("clean model", clean, xc))
        print(" " * len(k), _row("robust model (own)", robust, xc))
        for mode in MODES:
            p = rws.extract(
                clean, robust, method="rws", alpha=1.0, origin=origin, shallow=shallow, bn=mode
            )
            for a in ALPHAS:
                m = copy.deepcopy(clean)
                rws.apply(m, p, scale=a, clamp_var=True)
                print(" " * len(k), _row(f"{mode} α={a:g}", m, xc))
        p = rws.extract(clean, robust, method="rws", alpha=1.0, origin=origin, shallow=shallow)
        for mode, label in RECAL:
            for a in ALPHAS:
                m = copy.deepcopy(clean)
                rws.apply(m, p, scale=a)
                mix = a if label == "recal-mix" else None
                recalibrate_bn(m, DATA.train.x, corruption=k, severity=SEVERITY, mix=mix)
                print(" " * len(k), _row(f"{mode}+{label} α={a:g}", m, xc))
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    torch.set_num_threads(2)
    DATA = load_digits()
    for arch in sys.argv[1:] or ARCHS:
        bench(arch, ARCHS[arch])
