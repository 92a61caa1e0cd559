"""BatchNorm handling of RWS signatures, measured: every ``--bn`` mode and BN recalibration
(plain vs α-mixed) on the built-in digits setting, for the demo's small-cnn and a ResNet-20.

Per architecture: an origin, a clean model and one robust model per corruption, trained with the
demo's recipe (Adam, cosine schedule, robust models on severities 3–5) and cached under
``OUT``. Per corruption, mode and α ∈ ALPHAS: clean and corrupted (that corruption, severities
3–5, the fixed copy ``rws eval`` feeds) accuracy on the test split; the robust model's own
numbers beside. Recalibration runs on the training split corrupted by the same corruption.

Run: ``python benchmarks/bench_bn_modes.py`` (about 10 minutes on 2 CPU cores; cached after).
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import rws
from rws.data import load_digits
from rws.robustness.inputs import corrupted_inputs
from rws.training import finetune, init_model, recalibrate_bn
from rws.training.config import TrainConfig
from rws.training.metrics import accuracy

OUT = Path("/tmp/bench_bn_modes")
ARCHS = {"small-cnn": 2, "resnet20": 7}  # arch -> --shallow K (resnet20: stem + first stage)
CORRUPTIONS = ("gaussian_noise", "fog", "contrast")
SEVERITY = (3, 5)
ALPHAS = (0.5, 1.0)
EPOCHS = {"origin": 6, "finetune": 4}
MODES = ("average", "replace-all", "delta", "skip")
RECAL = (("average", "recal"), ("average", "recal-mix"))
DEV = torch.device("cpu")


def _train(arch: str, name: str, start: dict | None, corruptions: tuple[str, ...], seed: int):
    path = OUT / arch / f"{name}.safetensors"
    model = init_model(arch, 10, seed=seed)
    if path.is_file():
        model.load_state_dict(load_file(path))
        return model.eval()
    if start is not None:
        model.load_state_dict(start)
    epochs = EPOCHS["origin" if start is None else "finetune"]
    cfg = TrainConfig(epochs=epochs, lr=3e-3, optimizer="adam", schedule="cosine", batch_size=32,
                      weight_decay=0.0, corruptions=corruptions, severity=SEVERITY, seed=seed,
                      device="cpu")  # fmt: skip
    model = finetune(model, DATA, cfg).model
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return model.eval()


def _acc(model, x) -> float:
    return 100 * accuracy(model, x, DATA.test.y, 256, DEV)


def _row(label: str, model, xc) -> str:
    return f"{label:<26} {_acc(model, DATA.test.x):6.1f} {_acc(model, xc):6.1f}"


def bench(arch: str, shallow: int) -> None:
    t0 = time.time()
    origin = _train(arch, "origin", None, (), 0)
    clean = _train(arch, "clean", origin.state_dict(), (), 1)
    print(f"\n## {arch} (--shallow {shallow}); clean model: clean {_acc(clean, DATA.test.x):.1f}")
    for i, k in enumerate(CORRUPTIONS):
        robust = _train(arch, f"robust-{k}", origin.state_dict(), (k,), 2 + i)
        xc = corrupted_inputs(DATA.test.x, [k], SEVERITY, seed=0)
        print(f"\n{k}: {'variant':<26} {'clean':>6} {'corr.':>6}")
        print(" " * len(k), _row("clean model", clean, xc))
        print(" " * len(k), _row("robust model (own)", robust, xc))
        for mode in MODES:
            p = rws.extract(clean, robust, method="rws", origin=origin, shallow=shallow, bn=mode)
            for a in ALPHAS:
                m = copy.deepcopy(clean)
                rws.apply(m, p, scale=a, clamp_var=True)
                print(" " * len(k), _row(f"{mode} α={a:g}", m, xc))
        p = rws.extract(clean, robust, method="rws", origin=origin, shallow=shallow)
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
