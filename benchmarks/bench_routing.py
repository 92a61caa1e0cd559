"""Test-time patch routing on a mixed stream: the issue-19 figures.

The built-in setting: the shipped digits ResNet-20 (``signatures/clean.safetensors``) and its
three signatures (impulse noise, fog, contrast; ``signatures/``). A seeded stream of test-split
batches, each clean, or one corruption at a random severity 1–5: the three with a signature and
three without (UNKNOWN). Every batch is fed to

- ``base``; each signature alone (at its routing scale, below); the uniform composition of the
  three (α = 1/3 each, as ``rws demo``'s ``all.rws (α=1/|K|)``); the searched composition
  (``rws.compose(search=True, max_clean_drop=1)`` on the validation split, cycled copy);
- routed (``rws.Router``), hard and soft, with the input-statistics detector (logistic), the
  activation-statistics detector (first two BatchNorm inputs, nearest centroid) and a weight-
  prototype detector in the spirit of PEFT's Arrow (top right-singular vector of each signature's
  first-conv delta, nearest centroid on the projections);
- oracle routing (the batch's true corruption picks its signature; clean and unknown: none);
- test-time BatchNorm re-estimation on each batch (batch statistics instead of the running ones,
  on a copy of the model: the baseline of Schneider et al. 2020 and TENT's first step).

Routing scales: each signature's α searched on the validation split for its own corruption with
no clean budget (``Router(scales="auto", max_clean_drop=None)``): a routed signature only meets
batches the detector assigns to it. Detectors are fitted on validation batches only (never the
test split). Printed: accuracy per variant (mean over batches, and per kind of batch), each
detector's confusion matrix on the stream, and per-batch overhead against a forward pass at batch
256 on the CPU (medians).

    python benchmarks/bench_routing.py [--batches-per-kind 8] [--batch 48] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

import rws
from rws.analysis import SignatureLibrary
from rws.data import load_digits
from rws.models import load_model
from rws.robustness.corruptions import corrupt
from rws.routing import Router
from rws.routing.detector import fit_detector, training_batches

ROOT = Path(__file__).resolve().parents[1]
KNOWN = ("impulse_noise", "fog", "contrast")
UNKNOWN = ("gaussian_noise", "defocus_blur", "brightness")
SEED = 0
ALPHAS = (0.25, 0.5, 0.75, 1.0)  # routing-scale grid per signature (0 is always measured)
COEFFS = (0.25, 0.5, 1.0)  # composition-search coefficient grid (0 added), coarser than rws's


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean())


def bn_adapted(model: nn.Module) -> nn.Module:
    """A copy whose BatchNorm layers normalise with each batch's own statistics."""
    m = copy.deepcopy(model).eval()
    for mod in m.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.train()
            mod.momentum = 0.0  # batch statistics in the forward, running ones never updated
    return m


def stream(x: torch.Tensor, y: torch.Tensor, per_kind: int, batch: int) -> list[tuple]:
    g = torch.Generator().manual_seed(SEED + 100)
    kinds = ["clean", *KNOWN, *UNKNOWN]
    out = []
    for i in range(per_kind * len(kinds)):
        kind = kinds[int(torch.randint(len(kinds), (1,), generator=g))] if i else "clean"
        idx = torch.randperm(len(x), generator=g)[:batch]
        xb, sev = x[idx], 0
        if kind != "clean":
            sev = int(torch.randint(1, 6, (1,), generator=g))
            xb = corrupt(xb, kind, sev, generator=g)
        out.append((kind, sev, xb, y[idx]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches-per-kind", type=int, default=8)
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--fit-batches", type=int, default=32)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--cache", type=Path, default=None, help="keep the searches' results here")
    args = ap.parse_args()
    t_start = time.perf_counter()
    ds = load_digits()
    model = load_model("resnet20", ROOT / "signatures" / "clean.safetensors", 10).eval()
    lib = {e.corruption: e.patch for e in SignatureLibrary.from_folder(ROOT / "signatures").entries}
    val = (ds.val.x, ds.val.y)

    cache = json.loads(args.cache.read_text()) if args.cache and args.cache.is_file() else {}
    t = time.perf_counter()
    if "scales" not in cache:
        searched_scales = Router(model, [(p, c) for c, p in lib.items()], data=val,
                                 scales="auto", search={"grid": ALPHAS, "refine": 0.0},
                                 fit_batches=2)  # fmt: skip
        cache["scales"] = {e.corruption: e.patch.scale for e in searched_scales.entries}
        cache["scales_s"] = time.perf_counter() - t
    scales, t_scales = cache["scales"], cache["scales_s"]
    log(f"scales {scales}")
    sigs = {c: lib[c].replace(scale=s) for c, s in scales.items()}
    uniform = rws.compose([(lib[c], 1 / len(KNOWN)) for c in KNOWN])
    t = time.perf_counter()
    if "coefficients" not in cache:
        found = rws.compose([lib[c] for c in KNOWN], search=True, model=model, data=val,
                            max_clean_drop=1.0, copy="cycled", grid=COEFFS)  # fmt: skip
        cache["coefficients"] = found.provenance["composition_search"]["chosen"]["coefficients"]
        cache["coefficients_s"] = time.perf_counter() - t
    coeffs, t_comp = cache["coefficients"], cache["coefficients_s"]
    if args.cache:
        args.cache.write_text(json.dumps(cache, indent=1))
    log(f"coefficients {coeffs}")
    searched = rws.compose([(lib[c], a) for c, a in zip(KNOWN, coeffs, strict=True) if a])

    classes = ("none", *KNOWN)
    specs = [(None, 0), *((c, i + 1) for i, c in enumerate(KNOWN))]
    t = time.perf_counter()
    fit = training_batches(ds.val.x, specs, n_batches=args.fit_batches, batch_size=32,
                           severity=(1, 5), seed=SEED)  # fmt: skip
    deltas = [{n: sigs[c].delta(n) for n in sigs[c].tensors} for c in KNOWN]
    detectors = {k: fit_detector(k, model, fit, classes, deltas=deltas, seed=SEED)
                 for k in ("input", "activation", "prototype")}  # fmt: skip
    t_fit = time.perf_counter() - t
    library = [(sigs[c], c) for c in KNOWN]
    routers = {f"routed {m} ({k})": Router(model, library, detector=d, mode=m,
                                           input_shape=(3, 32, 32))
               for k, d in detectors.items() for m in ("hard", "soft")}  # fmt: skip
    bn = bn_adapted(model)
    log(f"detectors fitted in {t_fit:.0f} s")

    batches = stream(ds.test.x, ds.test.y, args.batches_per_kind, args.batch)
    acc: dict[str, list[float]] = {}
    kinds: list[str] = []
    confusion = {name: {} for name in routers if "hard" in name}
    for kind, _, xb, yb in batches:
        kinds.append(kind)
        with torch.no_grad():
            res = {"base": model(xb)}
            for c in KNOWN:
                with rws.patched(model, sigs[c]):
                    res[f"{c} alone"] = model(xb)
            with rws.patched(model, uniform):
                res["uniform composition (1/3 each, α=1)"] = model(xb)
            with rws.patched(model, searched):
                res["searched composition"] = model(xb)
            res["oracle routing"] = res[f"{kind} alone"] if kind in KNOWN else res["base"]
            res["BN re-estimation per batch"] = bn(xb)
            for name, r in routers.items():
                res[name] = r(xb)
                if name in confusion:
                    true = kind if kind in KNOWN or kind == "clean" else "unknown"
                    row = confusion[name].setdefault(true, {})
                    row[r.last.choice] = row.get(r.last.choice, 0) + 1
        for name, logits in res.items():
            acc.setdefault(name, []).append(accuracy(logits, yb))
        log(f"batch {len(kinds)}/{len(batches)} {kind}")

    groups = {"all": lambda k: True, "clean": lambda k: k == "clean",
              "known": lambda k: k in KNOWN, "unknown": lambda k: k in UNKNOWN}  # fmt: skip
    table = {}
    for name, vals in acc.items():
        table[name] = {gname: 100 * statistics.mean(v for v, k in zip(vals, kinds, strict=True)
                                                     if pick(k))
                       for gname, pick in groups.items()}  # fmt: skip

    # overhead at batch 256 on the CPU: router call vs a plain forward (medians of 7)
    x256 = corrupt(ds.test.x[:256], "fog", 3, generator=torch.Generator().manual_seed(1))
    overhead = {}
    with torch.no_grad():
        for name, r in routers.items():
            fwd, total, parts = [], [], []
            for _ in range(7):
                t = time.perf_counter()
                model(x256)
                fwd.append(time.perf_counter() - t)
                t = time.perf_counter()
                r(x256)
                total.append(time.perf_counter() - t)
                parts.append(r.last.overhead_s)
            f = statistics.median(fwd)
            overhead[name] = {"forward_ms": 1e3 * f, "routed_ms": 1e3 * statistics.median(total),
                              "overhead_ms": 1e3 * statistics.median(parts),
                              "overhead_pct": 100 * statistics.median(parts) / f}  # fmt: skip

    n = len(batches)
    print(
        f"stream: {n} batches of {args.batch} test digits (seed {SEED}): "
        f"{sum(k == 'clean' for k in kinds)} clean, "
        f"{sum(k in KNOWN for k in kinds)} with a signature ({', '.join(KNOWN)}), "
        f"{sum(k in UNKNOWN for k in kinds)} without ({', '.join(UNKNOWN)}); severities 1–5"
    )
    print(
        "routing scales (α searched per signature on {0.25, 0.5, 0.75, 1}, no clean budget): "
        + ", ".join(f"{c} {s:g}" for c, s in scales.items())
        + f" ({t_scales:.0f} s)"
    )
    print(
        "searched composition (1-point clean budget, cycled validation copy, "
        "coefficients {0, 0.25, 0.5, 1}): "
        + ", ".join(f"{c} {v:g}" for c, v in zip(KNOWN, coeffs, strict=True))
        + f" ({t_comp:.0f} s); detectors fitted in {t_fit:.0f} s on "
        f"{len(fit)} validation batches of 32"
    )
    print(f"\n| variant | all {n} batches | clean | with a signature | without |")
    print("|---|---|---|---|---|")
    for name, row in table.items():
        print(
            f"| {name} | {row['all']:.1f} | {row['clean']:.1f} | {row['known']:.1f} | "
            f"{row['unknown']:.1f} |"
        )
    for name, conf in confusion.items():
        cols = ["none", *KNOWN]
        print(f"\n{name}: confusion (rows true, columns routed)")
        print("| true \\ routed | " + " | ".join(cols) + " |")
        print("|---" * (len(cols) + 1) + "|")
        for true in ["clean", *KNOWN, "unknown"]:
            row = conf.get(true, {})
            print(f"| {true} | " + " | ".join(str(row.get(c, 0)) for c in cols) + " |")
    print(
        "\nper-batch overhead at batch 256 (fog 3), CPU, "
        f"{torch.get_num_threads()} threads, medians of 7:"
    )
    print("| router | forward ms | routed call ms | overhead ms | overhead % of forward |")
    print("|---|---|---|---|---|")
    for name, o in overhead.items():
        print(
            f"| {name} | {o['forward_ms']:.1f} | {o['routed_ms']:.1f} | "
            f"{o['overhead_ms']:.1f} | {o['overhead_pct']:.1f} |"
        )
    best_static = max(table[k]["all"] for k in table if "composition" in k)
    oracle = table["oracle routing"]
    print("\nfigures:")
    for name in routers:
        row = table[name]
        print(
            f"- {name}: {row['all']:.1f} vs oracle {oracle['all']:.1f} "
            f"({'within' if oracle['all'] - row['all'] <= 2 else 'NOT within'} 2 pt); "
            f"vs best static composition {best_static:.1f} "
            f"({'met' if row['all'] >= best_static else 'NOT met'}); clean "
            f"{row['clean'] - table['base']['clean']:+.1f} pt vs base "
            f"({'met' if table['base']['clean'] - row['clean'] <= 0.5 else 'NOT met'}); "
            f"overhead {overhead[name]['overhead_pct']:.1f} % "
            f"({'met' if overhead[name]['overhead_pct'] <= 20 else 'NOT met'})"
        )
    print(f"total {time.perf_counter() - t_start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"table": table, "confusion": confusion,
                                         "overhead": overhead, "scales": scales,
                                         "coefficients": coeffs}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
