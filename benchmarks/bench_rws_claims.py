"""The Robust Weight Signatures paper's claims, checked on the digits setup of `rws demo`.

Runs (or reuses) the demo in OUT/demo, trains a second robust model per corruption from the same
origin with another seed, and prints one line per claim with its numbers:
  (1) the signature's energy sits in the shallow layers      (4) α is a dial
  (2) same corruption, two seeds: closer than other ones    (5) signatures compose
  (3) clean + RWS recovers the robust model's accuracy      (6) int8 / nf4 lose little, are small
  (7) the signature still helps an updated backbone (the clean model fine-tuned further)

    python benchmarks/bench_rws_claims.py [OUT]     # ~3-5 min on 2 CPU cores, cached afterwards
"""

from __future__ import annotations

import copy
import itertools
import sys
from pathlib import Path

import rws
from rws.analysis import similarity
from rws.data import load_digits
from rws.demo import ARCH, DemoConfig, run_demo
from rws.io.safetensors_write import save_tensors
from rws.models import load_model
from rws.training import TrainConfig, finetune


def mean_acc(variant: rws.robustness.report.Variant, c: str) -> float:
    return sum(variant.corruptions[c].values()) / len(variant.corruptions[c])


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/rws-claims")
    cfg = DemoConfig()
    res = run_demo(out / "demo", cfg)
    rep, d = res.report, out / "demo"
    origin, clean = (load_model(ARCH, d / f"{n}.safetensors", 10) for n in ("origin", "clean"))
    robust = {k: load_model(ARCH, d / f"robust-{k}.safetensors", 10) for k in cfg.corruptions}
    data = load_digits()
    ks = list(cfg.corruptions)

    print("(1) signature energy per layer, ‖RWS‖/‖w‖ (all layers):")
    for k in ks:
        layers = rws.layer_deltas(clean, robust[k], method="rws", origin=origin)
        prof = "  ".join(f"{la.layer} {la.relative:.3f}" for la in layers)
        e = [la.relative**2 for la in layers]
        print(
            f"    {k:<15} {prof}   share of energy in the first 2 layers {sum(e[:2]) / sum(e):.0%}"
        )

    print("(2) cosine similarity of all-layer signatures, seed A vs seed B of the same corruption:")
    sig_a, sig_b = {}, {}
    for i, k in enumerate(ks):
        path = out / f"robust-{k}-seed2.safetensors"
        if path.exists():
            other = load_model(ARCH, path, 10)
        else:
            tc = TrainConfig(epochs=cfg.finetune_epochs, lr=cfg.lr, optimizer="adam", schedule="cosine",
                             batch_size=cfg.batch_size, weight_decay=0.0, corruptions=(k,),
                             severity=cfg.severity, seed=100 + i, device="cpu")  # fmt: skip
            other = finetune(copy.deepcopy(origin), data, tc).model
            save_tensors(path, other.state_dict())
        sig_a[k] = rws.extract(clean, robust[k], method="rws", origin=origin, name=f"{k}/A")
        sig_b[k] = rws.extract(clean, other, method="rws", origin=origin, name=f"{k}/B")
    sim = similarity([*sig_a.values(), *sig_b.values()], per_layer=False).overall
    n = len(ks)
    for i, k in enumerate(ks):
        same = float(sim[i][n + i])
        others = [float(sim[i][j]) for j in range(2 * n) if j not in (i, n + i)]
        print(f"    {k:<15} same corruption {same:.3f}   best other corruption {max(others):.3f}"
              f"   {'reproduced' if same > max(others) else 'NOT reproduced'}")  # fmt: skip

    base = rep.base
    print("(3) clean + RWS (first 2 layers, α=1) vs the robust model, mean over severities:")
    for k in ks:
        b, r, s = (
            mean_acc(base, k),
            mean_acc(rep.variant(f"{k}.robust-model"), k),
            mean_acc(rep.variant(f"{k}.rws"), k),
        )
        frac = (s - b) / (r - b) if r > b else float("nan")
        drop = 100 * (base.clean - rep.variant(f"{k}.rws").clean)
        print(f"    {k:<15} clean model {b:.3f}  robust model {r:.3f}  clean+RWS {s:.3f}  "
              f"recovered {frac:.0%}  clean accuracy drop {drop:.1f} pt")  # fmt: skip

    print("(4) α as a dial (accuracy on its corruption / clean accuracy):")
    for k in ks:
        row = [(0.0, mean_acc(base, k), base.clean)]
        row += [(a, mean_acc(v, k), v.clean) for a in cfg.alphas
                for v in [rep.variant(f"{k}.rws" if a == 1.0 else f"{k}.rws@{a:g}")]]  # fmt: skip
        accs = [r[1] for r in row]
        mono = all(x <= y + 1e-9 for x, y in itertools.pairwise(accs))
        print(f"    {k:<15} " + "  ".join(f"α={a:g}: {c:.3f}/{cl:.3f}" for a, c, cl in row)
              + f"   {'monotone' if mono else 'NOT monotone'}")  # fmt: skip

    comp = rep.variants[-1]
    print(f"(5) all signatures composed (α=1/{len(ks)} each), accuracy on each corruption:")
    for k in ks:
        print(
            f"    {k:<15} clean model {mean_acc(base, k):.3f} -> composed {mean_acc(comp, k):.3f}"
        )
    print(f"    clean accuracy {base.clean:.3f} -> {comp.clean:.3f}")

    print("(6) quantized signatures: accuracy on their corruption and size vs the fp32 model:")
    nf4 = {k: rws.extract(clean, robust[k], method="rws", origin=origin, codec="nf4", shallow=cfg.shallow,
                          name=f"{k}.rws-nf4") for k in ks}  # fmt: skip
    for k in ks:
        nf4[k].save(out / f"{k}.nf4.safetensors")
        fp, q8 = mean_acc(rep.variant(f"{k}.rws"), k), mean_acc(rep.variant(f"{k}.rws-int8"), k)
        s8, s4 = res.sizes[k], (out / f"{k}.nf4.safetensors").stat().st_size
        try:
            rep4 = rws.evaluate(
                clean, data, corruptions=[k], patches=[nf4[k]], seed=cfg.seed, device="cpu"
            )
            q4 = f"{mean_acc(rep4.variant(f'{k}.rws-nf4'), k):.3f}"
        except rws.RwsError as e:  # 4-bit error on a BN running-variance delta can cross zero
            q4 = f"refused ({e})"
        print(f"    {k:<15} fp32 {fp:.3f}  int8 {q8:.3f} ({res.model_bytes / s8:.1f}× smaller)  "
              f"nf4 ({res.model_bytes / s4:.1f}× smaller) {q4}")  # fmt: skip

    print("(7) updated backbone: the clean model fine-tuned 3 more epochs on clean data, then")
    print("    patched with the signatures taken against the clean model (--bn delta):")
    tc = TrainConfig(epochs=3, lr=cfg.lr / 3, optimizer="adam", schedule="cosine", batch_size=cfg.batch_size,
                     weight_decay=0.0, seed=77, device="cpu")  # fmt: skip
    updated = finetune(copy.deepcopy(clean), data, tc).model
    sigs = [
        # BN as a projected delta: the "average" mode's BN delta replaces the clean model's running
        # statistics, which on another backbone can drive a running variance below zero
        rws.extract(
            clean,
            robust[k],
            method="rws",
            origin=origin,
            shallow=cfg.shallow,
            bn="delta",
            name=f"{k}.rws",
        )
        for k in ks
    ]
    rep_up = rws.evaluate(
        updated,
        data,
        corruptions=ks,
        patches=sigs,
        seed=cfg.seed,
        device="cpu",
        force=True,
        clamp_var=True,
    )
    for k in ks:
        v = rep_up.variant(f"{k}.rws")
        print(f"    {k:<15} updated model {mean_acc(rep_up.base, k):.3f} -> + RWS {mean_acc(v, k):.3f}"
              f"   (clean accuracy {rep_up.base.clean:.3f} -> {v.clean:.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
