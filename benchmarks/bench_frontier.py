"""The compression frontier: bytes per patched parameter against the robustness a signature keeps.

Setting: the shipped signature library (``rws/_signatures/``: ResNet-20 on digits, one Robust
Weight Signature per corruption, stem + first stage = 7 of 20 layers, 35 tensors, 14,704
parameters) and its clean model. The reference is each signature decoded to float32 (it ships as
int8; the fp32 signatures themselves are not shipped), applied at its own scale (α = 1). Each
(codec × sparsity) re-encodes that reference with the defaults of ``rws extract`` (mixed
precision: 1-D and small tensors fp16/fp32) and is measured on the digits test split:

- bytes per patched parameter: the patch file's stored tensor bytes (and the whole file) / the
  parameters it touches;
- gain retained: (corrupted accuracy − the clean model's) / (the reference's − the clean
  model's), summed over the signatures whose reference gains at least 5 points (fog and
  contrast; the shipped impulse-noise signature at α = 1 lowers impulse-noise accuracy), each
  on its own corruption, severities 1-5;
- clean cost: the clean model's clean accuracy minus the patched one's, mean over signatures;
- refusals: applies refused (a BatchNorm running variance ≤ 0).

Then a ResNet-18-shaped size table (random heavy-tailed deltas, every float tensor; sizes only),
the header's share of a one-layer int8 ResNet-18 patch and of the shipped int8 patches re-saved.

Another built-in model: ``rws demo --arch small-cnn --out DIR --no-search`` then
``python benchmarks/bench_frontier.py --demo DIR --arch small-cnn`` (the same grid on that demo's
int8 signatures; its plot goes to ``DIR/compression-frontier.png``).

Run: ``python benchmarks/bench_frontier.py`` (26 rows: 8 codecs × 3 sparsities and 2 with a codec
map; 6.5 minutes on one thread of a quiet 2-core machine); writes
``docs/compression-frontier.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import tempfile
import time
from pathlib import Path

import torch

import rws
from rws.data import load_digits
from rws.io.safetensors_read import TensorFile
from rws.models import create_model
from rws.patching.encode import encode_deltas
from rws.patching.patch import Patch
from rws.robustness.corruptions import corrupt

CODECS = ["fp32", "fp16", "bf16", "int8", "bnb8", "nf4", "fp4", "ternary"]
# (codec, --codec-map) rows beyond the grid: the small tensors (here the BatchNorm ones, kept fp16
# by default) in int8; the 16-channel stem makes them 3 % of the parameters, a quarter of the bytes
MAPPED = [("ternary", ":small=int8"), ("nf4", ":small=int8")]
SPARSITY: list[tuple[str | None, float]] = [
    (None, 1.0),
    ("topk", 0.25),
    ("dare", 0.25),
]  # docs/compression.md's figures also ran ("topk", 0.1): every codec kept -1 to -3 %
SEVERITIES = (1, 2, 3, 4, 5)
MIN_GAIN = 0.05  # a signature counts towards "retained" when its fp32 form gains >= 5 points
SEED = 0
HERE = Path(__file__).resolve().parent
LIBRARY = Path(rws.__file__).resolve().parent / "_signatures"
PLOT = HERE.parent / "docs" / "compression-frontier.png"


def header_bytes(path: str | os.PathLike) -> tuple[int, int, int]:
    """(file bytes, safetensors header bytes incl. its 8-byte length, rws manifest bytes)."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    meta = json.loads(raw[8 : 8 + n]).get("__metadata__", {})
    return len(raw), 8 + n, len(meta.get("rws", "").encode())


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def evaluate(model: torch.nn.Module, clean: tuple, corrupted: tuple) -> tuple[float, float]:
    return accuracy(model, *clean), accuracy(model, *corrupted)


def library(demo: Path | None, arch: str | None) -> tuple[Path, str, list[tuple[str, Path]]]:
    """(clean checkpoint, arch, [(corruption, signature file)]): the shipped library, or the
    output folder of ``rws demo --arch ARCH --out DIR``."""
    if demo is None:
        index = json.loads((LIBRARY / "index.json").read_text())
        sigs = [(e["corruption"], LIBRARY / e["file"]) for e in index["signatures"]]
        return LIBRARY / index["model"]["clean"], index["model"]["arch"], sigs
    files = sorted((demo / "signatures").glob("*.rws.safetensors"))
    sigs = [(f.name.removesuffix(".rws.safetensors"), f) for f in files]
    return demo / "clean.safetensors", arch or "resnet20", sigs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--demo", type=Path, help="an `rws demo --out DIR` folder instead of the shipped library"
    )
    ap.add_argument("--arch", help="with --demo: the demo's --arch (default resnet20)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    torch.manual_seed(SEED)
    clean_path, arch, entries = library(args.demo, args.arch)
    clean_file = TensorFile(clean_path)
    base = {k: clean_file.get(k) for k in clean_file}
    model = create_model(arch).eval()
    model.load_state_dict(base)
    model.requires_grad_(False)
    print(f"{arch}: {clean_path}, signatures " + ", ".join(c for c, _ in entries))
    test = load_digits().test
    clean_xy = (test.x, test.y)
    sigs = {}
    for corruption, file in entries:
        p = rws.load(file)
        g = torch.Generator().manual_seed(SEED)
        xs = torch.cat([corrupt(test.x, corruption, s, generator=g) for s in SEVERITIES])
        ys = test.y.repeat(len(SEVERITIES))
        ref = {n: p.delta(n, scaled=False) for n in p.names()}
        sigs[corruption] = (p, ref, (xs, ys))
    base_acc = {c: evaluate(model, clean_xy, s[2]) for c, s in sigs.items()}

    def measure(
        codec: str, sparsify: str | None, density: float, tmp: str, codec_map: str | None = None
    ) -> dict:
        """Encode every signature so, apply, evaluate: per-signature numbers."""
        out = {"stored": 0, "file": 0, "numel": 0, "gain": {}, "cost": {}, "refused": 0}
        for c, (p, ref, corr) in sigs.items():
            tensors, _ = encode_deltas(((n, ref[n], base[n]) for n in ref), codec=codec,
                                       codec_map=codec_map, sparsify=sparsify, density=density,
                                       seed=SEED)  # fmt: skip
            patch = Patch(tensors=tensors, kind=p.kind, scale=p.scale, name=c, base=dict(p.base))
            path = os.path.join(tmp, f"{c}.safetensors")
            patch.save(path)
            out["stored"] += patch.nbytes()
            out["file"] += os.path.getsize(path)
            out["numel"] += patch.numel()
            sd = {k: v.clone() for k, v in base.items()}
            try:
                rws.apply(sd, rws.load(path))
            except rws.RwsError:
                out["refused"] += 1
                continue
            if c not in helped:  # applied (a BN state check); not counted, not evaluated
                continue
            model.load_state_dict(sd)
            acc = evaluate(model, clean_xy, corr)
            out["cost"][c] = 100 * (base_acc[c][0] - acc[0])
            out["gain"][c] = acc[1] - base_acc[c][1]
        model.load_state_dict(base)
        return out

    rows = []
    helped = list(sigs)
    with tempfile.TemporaryDirectory() as tmp:
        reference = measure("fp32", None, 1.0, tmp)["gain"]
        print("reference (the signatures in fp32, dense): corrupted-accuracy gain "
              + ", ".join(f"{c} +{100 * g:.1f}" for c, g in reference.items()) + " points")  # fmt: skip
        helped[:] = [c for c, g in reference.items() if g >= MIN_GAIN]
        print(f"retained: over the signatures that gain >= {100 * MIN_GAIN:g} points: "
              + ", ".join(helped))  # fmt: skip
        print(f"{'codec':7} {'sparsity':10} {'B/param':>8} {'file B/p':>8} "
              f"{'retained':>8} {'clean cost':>10} {'refused':>7}")  # fmt: skip
        grid = [(c, None, sp, d) for c in CODECS for sp, d in SPARSITY]
        for codec, cmap, sp, d in grid + [(c, cm, None, 1.0) for c, cm in MAPPED]:
            m = measure(codec, sp, d, tmp, cmap)
            ref = sum(reference[c] for c in m["gain"] if c in helped)
            r = {"codec": codec, "codec_map": cmap, "sparsify": sp, "density": d,
                 "refused": m["refused"],
                 "bytes_per_param": m["stored"] / m["numel"],
                 "file_bytes_per_param": m["file"] / m["numel"],
                 "retained": sum(g for c, g in m["gain"].items() if c in helped) / ref
                 if ref else float("nan"),
                 "clean_cost": sum(m["cost"].values()) / max(len(m["cost"]), 1)}  # fmt: skip
            rows.append(r)
            label = ("dense" if sp is None else f"{sp} {d:g}") + (f" {cmap}" if cmap else "")
            print(f"{codec:7} {label:10} {r['bytes_per_param']:8.3f} "
                  f"{r['file_bytes_per_param']:8.3f} {100 * r['retained']:7.1f}% "
                  f"{r['clean_cost']:9.2f}p {r['refused']:7d}", flush=True)  # fmt: skip
    good = [r for r in rows if r["retained"] >= 0.95 and r["refused"] == 0]
    best = min(good, key=lambda r: r["bytes_per_param"]) if good else None
    if best:
        print(f"smallest keeping >= 95 % of the fp32 gain: {best['codec']} "
              f"{best['sparsify'] or 'dense'} {best['density']:g}"
              f"{' --codec-map ' + best['codec_map'] if best['codec_map'] else ''}: "
              f"{best['bytes_per_param']:.3f} B/param ({4 / best['bytes_per_param']:.1f}x "
              f"smaller than fp32), {100 * best['retained']:.1f} % retained")  # fmt: skip
    print(f"refusals on the BatchNorm model: {sum(r['refused'] for r in rows)}")
    if args.demo is None:
        plot(rows, PLOT, "ResNet-20 digits signatures")
        resnet18_table()
        headers()
    else:
        plot(rows, args.demo / "compression-frontier.png", f"{arch} digits signatures")
    print(f"done in {time.perf_counter() - t0:.0f} s")


def plot(rows: list[dict], path: Path, label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 5), constrained_layout=True)
    markers = {None: "o", "topk": "s", "dare": "^", "map": "*"}
    colors = dict(zip(CODECS, plt.cm.tab10.colors, strict=False))
    for r in rows:
        kw = {
            "marker": markers["map" if r["codec_map"] else r["sparsify"]],
            "color": colors[r["codec"]],
            "s": 30 + 60 * r["density"],
        }
        a1.scatter(r["bytes_per_param"], 100 * r["retained"], **kw)
        a2.scatter(r["bytes_per_param"], r["clean_cost"], **kw)
    for ax in (a1, a2):
        ax.set_xscale("log")
        ax.set_xticks([0.125, 0.25, 0.5, 1, 2, 4], ["0.125", "0.25", "0.5", "1", "2", "4"])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("stored bytes per patched parameter (log)")
        ax.axvline(0.25, color="grey", ls=":", lw=1)
        ax.grid(alpha=0.3)
    a1.axhline(95, color="grey", ls=":", lw=1)
    a1.set_ylabel("fp32 signature's corrupted-accuracy gain retained (%)")
    a2.set_ylabel("clean accuracy cost (points)")
    a1.set_title(f"Gain kept per byte ({label})")
    a2.set_title("Clean cost per byte")
    handles = [plt.Line2D([], [], ls="", marker="o", color=colors[c], label=c) for c in CODECS]
    names = {None: "dense", "map": "dense, :small=int8"}
    handles += [plt.Line2D([], [], ls="", marker=markers[k], color="k", label=names.get(k, k))
                for k in markers]  # fmt: skip
    a1.legend(handles=handles, fontsize=8, ncol=2, title="codec / sparsity (size: density)")
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def resnet18_table() -> None:
    """Sizes of a whole-ResNet-18 patch (heavy-tailed random deltas) per codec and sparsity."""
    model = create_model("resnet18")
    g = torch.Generator().manual_seed(SEED)
    base = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
    deltas = {k: 1e-3 * torch.distributions.StudentT(3.0).sample(v.shape) for k, v in base.items()}
    del g
    numel = sum(v.numel() for v in base.values())
    print(
        f"\nResNet-18 (all {len(base)} float tensors, {numel:,} parameters, fp32 {4 * numel / 2**20:.1f} MiB)"
    )
    print(f"{'codec':6} {'sparsity':10} {'MiB':>7} {'B/param':>8} {'vs fp32':>8}")
    for codec in ["fp32", "fp16", "int8", "bnb8", "nf4", "ternary"]:
        for sp, d in [(None, 1.0), ("topk", 0.1)]:
            tensors, _ = encode_deltas(((n, deltas[n], base[n]) for n in base), codec=codec,
                                       sparsify=sp, density=d)  # fmt: skip
            nbytes = sum(t.encoded.nbytes() for t in tensors.values())
            label = "dense" if sp is None else f"{sp} {d:g}"
            print(f"{codec:6} {label:10} {nbytes / 2**20:7.2f} {nbytes / numel:8.3f} "
                  f"{4 * numel / nbytes:7.1f}x")  # fmt: skip


def headers() -> None:
    """The header's share of small int8 patches: one ResNet-18 layer, the shipped library."""
    model = create_model("resnet18")
    g = torch.Generator().manual_seed(SEED)
    sd = model.state_dict()
    tuned = {k: v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
             for k, v in sd.items()}  # fmt: skip
    tuned = {k: v.abs() + 0.5 if k.endswith("running_var") else v for k, v in tuned.items()}
    print("\nheader share (safetensors header incl. manifest / rws manifest alone, of the file)")
    with tempfile.TemporaryDirectory() as tmp:
        cases = {"ResNet-18 one layer, int8": rws.extract(model, tuned, codec="int8", shallow=1)}
        for corruption, file in library(None, None)[2]:
            cases[f"library {corruption}, int8 (format 1 as shipped)"] = file
            cases[f"library {corruption}, int8 (re-saved, format 3)"] = rws.load(file)
        for label, what in cases.items():
            path = what
            if isinstance(what, Patch):
                path = os.path.join(tmp, "p.safetensors")
                what.save(path)
            size, head, manifest = header_bytes(path)
            print(f"{label:48} {size:7,} B: header {100 * head / size:5.1f} %, "
                  f"manifest {100 * manifest / size:5.1f} %")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
