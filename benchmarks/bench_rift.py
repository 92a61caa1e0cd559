"""RiFT on digits, both recipes on the same AT model: MRC per module, the chosen module, and AT vs
RiFT-patched test accuracy.

A built-in model (``--arch small-cnn`` or ``resnet20``) is trained on clean digits (Adam, cosine),
then adversarially trained with PGD-10 (ε = 8/255, SGD, ``AT_EPOCHS`` epochs, best validation-PGD
epoch kept). RiFT then runs on that one AT model with each recipe (``rws.recipes.rift.RIFT_RECIPES``):

- ``rws``: MRC on PGD-10 examples of the training split (fixed batches of 128); the module's weight,
  bias and BatchNorm fine-tuned with every other module in eval mode, no augmentation; one PGD run
  in the α search;
- ``reference``: the reference code's choices: MRC on the test split (shuffled batches of 512, PGD
  step 2/225); the weight alone fine-tuned with the whole model in train mode (every BatchNorm
  re-estimates its statistics), random crop (4, reflect) and flip; worst of 3 PGD runs;
- ``reference, no flip``: the same without the flip (digits are not mirror-symmetric).

Fine-tuning is the reference's (SGD lr ``RIFT_LR`` = 1e-3, momentum 0.9, wd 5e-4, 10 epochs, ×0.1 at
half) and the α rule the paper's (best clean validation accuracy with PGD accuracy at most 0.1
point below the AT model's). Printed: the MRC table of each recipe, the rws MRC against the deep-copy
way (time ratio, largest difference), the α curves, and test accuracy clean / corrupted (15
corruptions × 5 severities, one fixed copy) / PGD-10 (worst of 3 runs) for every row, with Δ to AT.

Run: ``python benchmarks/bench_rift.py [--arch small-cnn|resnet20]`` (``BENCH_THREADS=N``; about
8 minutes for small-cnn on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rws
from rws.data import load_digits
from rws.io.hashing import state_sha256
from rws.recipes.alpha import AlphaSettings
from rws.recipes.criticality import MrcSettings, adversarial_set, layers_of, module_mrc, mrc
from rws.recipes.rift import RIFT_RECIPES, rift, rift_train_config
from rws.robustness.corruptions import CORRUPTIONS
from rws.robustness.inputs import corrupted_inputs
from rws.training import TrainConfig, finetune, init_model
from rws.training.state import data_fingerprint

EPS = 8 / 255
AT_EPOCHS = int(os.environ.get("AT_EPOCHS", "10"))
LR = float(os.environ.get("RIFT_LR", "0.001"))


def loss_of(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int) -> float:
    with torch.no_grad():
        total = sum(
            float(F.cross_entropy(model(x[a : a + bs]), y[a : a + bs], reduction="sum"))
            for a in range(0, len(y), bs)
        )
    return total / len(y)


def reference_mrc(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, s: MrcSettings) -> dict:
    """The reference's way: deep copy per module, optimizer on −loss, all params tracked."""
    bs, out = s.batch_size, {}
    l0 = loss_of(model, x, y, bs)
    for name, _ in layers_of(model):
        m = copy.deepcopy(model).eval()
        w = dict(m.named_parameters())[f"{name}.weight"]
        w0 = w.detach().clone()
        opt = torch.optim.SGD(m.parameters(), lr=s.lr)
        best = l0
        for _ in range(s.passes):
            for a in range(0, len(y), bs):
                opt.zero_grad()
                (-F.cross_entropy(m(x[a : a + bs]), y[a : a + bs])).backward()
                for p in m.parameters():  # only the module moves
                    if p is not w:
                        p.grad = None
                opt.step()
            with torch.no_grad():
                d = w - w0
                r = s.eps_ratio * float(w0.double().norm())
                n = float(d.double().norm())
                if n > r:
                    w.copy_(w0 + d * (r / n))
            best = max(best, loss_of(m, x, y, bs))
        out[name] = best - l0
    return out


def compare_with_reference(model: torch.nn.Module, data: object, repeats: int = 3) -> None:
    """rws's MRC vs the reference's way on one adversarial set, interleaved, medians."""
    s = MrcSettings(passes=3, n_examples=384)
    x, y = adversarial_set(model, data.train, s, torch.device("cpu"))
    base = (loss_of(model, x, y, s.batch_size), 0.0)
    params = dict(model.named_parameters())
    fast, slow, diff = [], [], 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        ours = {n: module_mrc(model, params[f"{n}.weight"], x, y, s, base)[0] - base[0]
                for n, _ in layers_of(model)}  # fmt: skip
        fast.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ref = reference_mrc(model, x, y, s)
        slow.append(time.perf_counter() - t0)
        diff = max(diff, *(abs(ours[n] - ref[n]) for n in ours))
    f, r = statistics.median(fast), statistics.median(slow)
    print(
        f"MRC, rws vs the reference's way (deep copy per module, all parameters tracked), "
        f"{len(y)} examples × {s.passes} passes, medians of {repeats} interleaved runs: "
        f"{f:.2f} s vs {r:.2f} s ({r / f:.2f}× faster), largest MRC difference {diff:.1e}"
    )


def accuracies(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, xc: torch.Tensor) -> tuple:
    """Clean, corrupted and PGD-10 accuracy (the worst of 3 seeded runs, as the paper reports)."""
    model.eval()
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
        corr = float((model(xc).argmax(1) == y).float().mean())
    rob = 1.0
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        xa = rws.attack(model, x, y, "pgd", eps=EPS, steps=10, generator=g, batch_size=256)
        with torch.no_grad():
            rob = min(rob, float((model(xa).argmax(1) == y).float().mean()))
    return clean, corr, rob


CLEAN = {  # clean pre-training of each built-in model (Adam, cosine; the demo's recipe for resnet20)
    "small-cnn": {"epochs": 8, "lr": 3e-3, "batch_size": 32},
    "resnet20": {"epochs": 6, "lr": 3e-3, "batch_size": 32, "crop_padding": 4, "weight_decay": 0.0},
}


def train_at(arch: str, data: object, cache: Path | None) -> tuple[torch.nn.Module, float]:
    """The clean then adversarially trained model and its median AT epoch time, read back from
    ``cache`` (a .safetensors file with a .json beside it) when an earlier run wrote them."""
    model = init_model(arch, 10, seed=0)
    meta_path = cache.with_suffix(".json") if cache is not None else None
    if cache is not None and cache.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta["epochs"] == AT_EPOCHS:
            model.load_state_dict(load_file(cache))
            print(f"{arch}: AT model ({AT_EPOCHS} epochs of PGD-10 training) read from {cache}")
            return model.eval(), meta["epoch_s"]
    finetune(model, data, TrainConfig(optimizer="adam", schedule="cosine", seed=0, device="cpu",
                                      **CLEAN[arch]))  # fmt: skip
    at_cfg = TrainConfig(epochs=AT_EPOCHS, lr=0.01, batch_size=64, seed=0, attack="pgd", eps=EPS,
                         attack_steps=10, keep_best=True, device="cpu")  # fmt: skip
    at = finetune(model, data, at_cfg)
    epoch_s = statistics.median(h.seconds for h in at.history)
    print(f"{arch}: {AT_EPOCHS} epochs of PGD-10 training, best epoch {at.best_epoch}, "
          f"median epoch {epoch_s:.1f} s (validation PGD accuracy included)")  # fmt: skip
    if cache is not None:
        save_file(at.model.state_dict(), cache)
        meta_path.write_text(json.dumps({"epochs": AT_EPOCHS, "epoch_s": epoch_s}))
    return at.model, epoch_s


def print_mrc(label: str, table: object, seconds: float, epoch_s: float) -> None:
    print(f"\nMRC, {label} recipe: {table.n_examples} PGD-10 examples of the "
          f"{table.settings.split} split (robust acc {table.base_robust_acc:.3f}, loss "
          f"{table.base_loss:.3f}); {seconds:.1f} s = {seconds / epoch_s:.2f} AT epochs")  # fmt: skip
    print(f"{'module':16} {'MRC':>8} {'robust acc':>11} {'robust drop':>12}")
    for m in table.modules:
        mark = "  <- least critical" if m.module == table.least_critical.module else ""
        print(
            f"{m.module:16} {m.mrc:8.4f} {m.robust_acc:11.3f} {100 * m.robust_drop:10.1f}pt{mark}"
        )


def run_recipe(label: str, recipe: str, at_model: torch.nn.Module, data: object, epoch_s: float,
               work: Path, tables: dict, **train: object) -> rws.Patch:  # fmt: skip
    rec = RIFT_RECIPES[recipe]
    if recipe not in tables:  # one MRC per recipe: rows of the same recipe share it
        t0 = time.perf_counter()
        tables[recipe] = mrc(at_model, data, settings=rec.mrc, device="cpu")
        print_mrc(recipe, tables[recipe], time.perf_counter() - t0, epoch_s)
    table = tables[recipe]
    work.mkdir()
    cache = {"model_sha256": state_sha256(at_model.state_dict()), "data": data_fingerprint(data),
             **table.to_dict()}  # fmt: skip
    (work / "mrc.json").write_text(json.dumps(cache))  # the MRC above, not remeasured
    alpha = AlphaSettings(corruptions=CORRUPTIONS, max_robust_drop=0.1, copy="cycled",
                          attack_step_size=rec.mrc.attack_step_size, attack_runs=rec.attack_runs)  # fmt: skip
    cfg = rift_train_config(**{**rec.train, "lr": LR, **train})
    res = rift(at_model, data, recipe=recipe, alpha_settings=alpha, train_config=cfg,
               device="cpu", work_dir=work)  # fmt: skip
    print(f"{label}: module {res.module}, {len(res.patch.tensors)} tensors patched, "
          f"α = {res.curve.chosen.alpha:g} (validation)")  # fmt: skip
    for p in res.curve.points:
        print(
            f"  α={p.alpha:5.3f}  clean {p.clean:.4f}  corrupted {p.corrupted:.4f}  PGD {p.robust:.4f}"
        )
    return res.patch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="small-cnn", choices=sorted(CLEAN))
    parser.add_argument("--at-cache", type=Path, help="Keep (and reuse) the AT model in this file.")
    parser.add_argument(
        "--no-flip-row", action="store_true", help="Skip the reference-no-flip row."
    )
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    data = load_digits()
    at_model, epoch_s = train_at(args.arch, data, args.at_cache)
    if args.arch == "small-cnn":
        compare_with_reference(at_model, data)
    xt, yt = data.test.x, data.test.y
    xc = corrupted_inputs(xt, CORRUPTIONS, (1, 5), seed=1)
    before = accuracies(at_model, xt, yt, xc)
    rows = [("AT", before)]
    print(f"AT test accuracy: clean {100 * before[0]:.2f}, corrupted {100 * before[1]:.2f}, "
          f"PGD-10 {100 * before[2]:.2f}")  # fmt: skip
    runs = [("rws", "rws", {}), ("reference", "reference", {})]
    if not args.no_flip_row:
        runs.append(("reference, no flip", "reference", {"flip": False}))
    tables: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, recipe, train) in enumerate(runs):
            work = Path(tmp) / str(i)
            patch = run_recipe(label, recipe, at_model, data, epoch_s, work, tables, **train)
            patched = copy.deepcopy(at_model)
            rws.apply(patched, patch)
            acc = accuracies(patched, xt, yt, xc)
            rows.append((f"RiFT {label}, {patch.provenance['module']}, α={patch.scale:g}", acc))
            print(f"test accuracy: clean {100 * acc[0]:.2f}, corrupted {100 * acc[1]:.2f}, "
                  f"PGD-10 {100 * acc[2]:.2f}")  # fmt: skip
    print(
        f"\n{args.arch}: test accuracy, {len(yt)} digits (fine-tuning lr {LR:g}; PGD-10 worst of 3)"
    )
    print(f"{'':44} {'clean':>6}   {'corrupted':>9}   {'PGD-10':>6}   (Δ to AT)")
    for label, (c, o, r) in rows:
        delta = "" if label == "AT" else (
            f"   ({100 * (c - before[0]):+.2f} / {100 * (o - before[1]):+.2f} / "
            f"{100 * (r - before[2]):+.2f})"
        )  # fmt: skip
        print(f"{label:44} {100 * c:6.2f}   {100 * o:9.2f}   {100 * r:6.2f}{delta}")


if __name__ == "__main__":
    main()
