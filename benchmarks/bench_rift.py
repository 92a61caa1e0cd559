"""RiFT on digits: MRC per module, the chosen module, and AT vs RiFT-patched accuracy.

A small CNN is trained on clean digits (Adam, 8 epochs), then adversarially trained with PGD-10
(ε = 8/255, SGD, ``AT_EPOCHS`` epochs, best validation-PGD epoch kept). RiFT then runs with the
reference defaults (MRC: ε-ratio 0.1, 10 ascent passes at lr 1 over PGD-10 examples of the whole
training split; fine-tuning: SGD lr 1e-3 (``RIFT_LR``), 10 epochs, ×0.1 at half; α grid 0…1, clean
criterion, at most 0.1 point of validation PGD accuracy lost). Printed:

- MRC per module, and its cost relative to one AT epoch;
- the same MRC computed the reference's way (a deep copy per module, every parameter tracked by
  autograd, an optimizer step on the negated loss) side by side: time ratio, largest difference;
- test accuracy clean / corrupted (15 corruptions × 5 severities, one fixed copy) / PGD-10 for the
  AT model, the RiFT-patched one, and the paper's ablation: the same recipe on the *most* critical
  module.

Run: ``python benchmarks/bench_rift.py`` (about 5 minutes on 2 CPU cores; ``BENCH_THREADS=N``).
"""

from __future__ import annotations

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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rws
from rws.data import load_digits
from rws.io.hashing import state_sha256
from rws.recipes.alpha import AlphaSettings
from rws.recipes.criticality import MrcSettings, adversarial_set, layers_of, module_mrc, mrc
from rws.recipes.rift import rift, rift_train_config
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
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
        corr = float((model(xc).argmax(1) == y).float().mean())
    g = torch.Generator().manual_seed(0)
    xa = rws.attack(model, x, y, "pgd", eps=EPS, steps=10, generator=g, batch_size=256)
    with torch.no_grad():
        rob = float((model(xa).argmax(1) == y).float().mean())
    return clean, corr, rob


def main() -> None:
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    data = load_digits()
    model = init_model("small-cnn", 10, seed=0)
    finetune(model, data, TrainConfig(epochs=8, lr=3e-3, optimizer="adam", schedule="cosine",
                                      batch_size=32, seed=0, device="cpu"))  # fmt: skip
    at_cfg = TrainConfig(epochs=AT_EPOCHS, lr=0.01, batch_size=64, seed=0, attack="pgd", eps=EPS,
                         attack_steps=10, keep_best=True, device="cpu")  # fmt: skip
    at = finetune(model, data, at_cfg)
    epoch_s = statistics.median(h.seconds for h in at.history)
    at_model = at.model
    print(f"AT: {AT_EPOCHS} epochs of PGD-10 training, best epoch {at.best_epoch}, "
          f"median epoch {epoch_s:.1f} s (validation PGD accuracy included)")  # fmt: skip

    s = MrcSettings()
    t0 = time.perf_counter()
    table = mrc(at_model, data, settings=s, device="cpu")
    mrc_s = time.perf_counter() - t0
    print(f"\nMRC on {table.n_examples} PGD-10 training examples (robust acc "
          f"{table.base_robust_acc:.3f}, loss {table.base_loss:.3f}):")  # fmt: skip
    print(f"{'module':8} {'MRC':>8} {'robust acc':>11} {'robust drop':>12}")
    for m in table.modules:
        mark = "  <- least critical" if m.module == table.least_critical.module else ""
        print(f"{m.module:8} {m.mrc:8.4f} {m.robust_acc:11.3f} {100 * m.robust_drop:10.1f}pt{mark}")
    print(
        f"MRC cost: {mrc_s:.1f} s = {mrc_s / epoch_s:.2f} AT epochs (median AT epoch {epoch_s:.1f} s)"
    )
    compare_with_reference(at_model, data)

    alpha = AlphaSettings(corruptions=CORRUPTIONS, max_robust_drop=0.1, copy="cycled")
    xt, yt = data.test.x, data.test.y
    xc = corrupted_inputs(xt, CORRUPTIONS, (1, 5), seed=1)
    before = accuracies(at_model, xt, yt, xc)
    rows = [("AT", before)]
    most = max(table.modules, key=lambda m: m.mrc).module
    with tempfile.TemporaryDirectory() as tmp:
        for label, module in (("RiFT (least critical)", None), (f"ablation: {most}", most)):
            work = Path(tmp) / (module or "least")
            work.mkdir()
            cache = {"model_sha256": state_sha256(at_model.state_dict()),
                     "data": data_fingerprint(data), **table.to_dict()}  # fmt: skip
            (work / "mrc.json").write_text(json.dumps(cache))  # the MRC above, not remeasured
            res = rift(at_model, data, module=module, mrc_settings=s, alpha_settings=alpha,
                       train_config=rift_train_config(lr=LR), device="cpu", work_dir=work)  # fmt: skip
            print(f"\n{label}: module {res.module}, α = {res.curve.chosen.alpha:g} (validation)")
            for p in res.curve.points:
                print(f"  α={p.alpha:3.1f}  clean {p.clean:.4f}  corrupted {p.corrupted:.4f}  "
                      f"PGD {p.robust:.4f}")  # fmt: skip
            patched = copy.deepcopy(at_model)
            rws.apply(patched, res.patch)
            rows.append((f"{label}, α={res.patch.scale:g}", accuracies(patched, xt, yt, xc)))
    print(f"\nTest ({len(yt)} digits; fine-tuning lr {LR:g})   clean   corrupted   PGD-10")
    for label, (c, o, r) in rows:
        delta = "" if label == "AT" else (
            f"   ({100 * (c - before[0]):+.2f} / {100 * (o - before[1]):+.2f} / "
            f"{100 * (r - before[2]):+.2f})"
        )  # fmt: skip
        print(f"{label:38} {100 * c:6.2f}   {100 * o:9.2f}   {100 * r:6.2f}{delta}")


if __name__ == "__main__":
    main()
