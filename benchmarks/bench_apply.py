"""Figure 2 (issue 2): apply a full-model int8 patch to a 2 GiB fp16 safetensors checkpoint.

Side by side in one run, each repetition in a fresh subprocess (so peak RSS is its own):
  copy     the physical floor: read the checkpoint's bytes and write them to a new file (fsync)
  copy+wb  the same copy done the way rws does its I/O (1 MiB blocks through one reused buffer,
           writeback started every 32 MiB with posix_fadvise DONTNEED): the stricter floor, shown
           so that no ratio flatters rws
  naive    load the whole checkpoint, add every decoded delta, save_file the result
  rws      rws.apply_file: streamed in runs, hashed as read, patched in cache, written behind
  rws+undo the same with undo=True: also writes OUT.undo.safetensors (the low bits rounding
           drops, for an exact `rws remove`; issue 17)
Prints median wall time, CPU time (user + sys, all threads) and peak RSS of each, the ratios
rws / copy (goal <= 2), rws / copy+wb and rws RSS / naive RSS (goal < 25%), and the undo file's
size. ``--undo-table`` prints only the exact-undo table: share of bit-exact elements after
apply → remove without undo, and the undo file's size, at ‖δ‖/‖w‖ = 1e-3 and 1 (fp32 and bf16,
4 M elements).

Fairness: modes interleave within each repetition (drifting machine load hits all alike); the
inputs are read once before timing, so every mode reads them from the page cache; imports
(torch, safetensors, rws) happen before the clock starts in every mode, so the times are the work.

    python benchmarks/bench_apply.py [--gib 2] [--repeats 5] [--dir /tmp/rws-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HIDDEN = 2048
FFN = 4 * HIDDEN


def layer_shapes(i: int) -> dict[str, tuple[int, ...]]:
    p = f"model.layers.{i}."
    return {
        p + "input_layernorm.weight": (HIDDEN,),
        p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN),
        p + "self_attn.k_proj.weight": (HIDDEN, HIDDEN),
        p + "self_attn.v_proj.weight": (HIDDEN, HIDDEN),
        p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
        p + "post_attention_layernorm.weight": (HIDDEN,),
        p + "mlp.up_proj.weight": (FFN, HIDDEN),
        p + "mlp.down_proj.weight": (HIDDEN, FFN),
    }


def make_inputs(folder: Path, gib: float) -> tuple[Path, Path]:
    """A transformer-shaped random fp16 checkpoint of ~gib GiB and a full-model int8 patch."""
    from rws.io.safetensors_write import StreamWriter
    from rws.patching.patch import Patch, encode_deltas

    base, patch_path = folder / f"base-{gib}g.safetensors", folder / f"patch-{gib}g.safetensors"
    if base.exists() and patch_path.exists():
        return base, patch_path
    per_layer = sum(torch.Size(s).numel() for s in layer_shapes(0).values()) * 2
    n_layers = max(1, round(gib * 2**30 / per_layer))
    spec = {}
    for i in range(n_layers):
        spec.update({k: (torch.float16, s) for k, s in layer_shapes(i).items()})
    g = torch.Generator().manual_seed(0)
    deltas = []
    with StreamWriter(base, spec, {"format": "pt"}) as w:
        for name, (dt, shape) in spec.items():
            t = (torch.randn(shape, generator=g) * 0.02).to(dt)
            w.write(name, t)
            d = torch.randn(shape, generator=g) * 1e-3
            deltas.append(encode_deltas([(name, d, t)], codec="int8"))
    tensors = {}
    for enc, _ in deltas:
        tensors.update(enc)
    Patch(tensors=tensors, name="full-int8").save(patch_path)
    return base, patch_path


def run_mode(mode: str, base: str, patch: str, out: str) -> dict[str, float]:
    from safetensors.torch import load_file, save_file

    import rws

    extra: dict[str, float] = {}
    t0, c0 = time.perf_counter(), time.process_time()
    if mode == "copy":
        with open(base, "rb") as src, open(out, "wb") as dst:
            while block := src.read(16 << 20):
                dst.write(block)
            dst.flush()
            os.fsync(dst.fileno())
    elif mode == "copy+wb":
        buf = memoryview(bytearray(1 << 20))
        with open(base, "rb", buffering=0) as src, open(out, "wb", buffering=0) as dst:
            kicked = done = 0
            while got := src.readinto(buf):
                dst.write(buf[:got])
                done += got
                if done - kicked >= 32 << 20:
                    os.posix_fadvise(dst.fileno(), kicked, done - kicked, os.POSIX_FADV_DONTNEED)
                    kicked = done
            os.fsync(dst.fileno())
    elif mode == "naive":
        p = rws.load(patch)
        sd = load_file(base)
        for name in p.names():
            sd[name] = (sd[name].float() + p.delta(name)).to(sd[name].dtype)
        save_file(sd, out)
    elif mode == "rws":
        rws.apply_file(base, [rws.load(patch)], out)
    elif mode == "rws+undo":
        res = rws.apply_file(base, [rws.load(patch)], out, undo=True)
        extra = {"undo_mib": os.path.getsize(res.undo_path) / 2**20,
                 "undo_elements": res.report.undo.elements()}  # fmt: skip
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    # VmHWM, not ru_maxrss: the latter survives exec, so a child would inherit the parent's peak
    with open("/proc/self/status") as fh:
        hwm = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    rss = hwm / 1024  # KiB -> MiB
    return {"wall_s": wall, "cpu_s": cpu, "rss_mib": rss, **extra}


def undo_table() -> None:
    """Exact undo: bit-exact share after apply → remove without undo, and the undo file's size
    (a share of the checkpoint's), for one 2048×2048 tensor at ‖δ‖/‖w‖ = 1e-3 and 1."""
    import tempfile

    from safetensors.torch import load_file, save_file

    import rws
    from rws.patching.patch import Patch, encode_deltas
    from rws.patching.undo import bits

    g = torch.Generator().manual_seed(0)
    print("dtype     codec ‖δ‖/‖w‖  exact w/o undo  undo elements  undo file  of checkpoint")
    with tempfile.TemporaryDirectory() as tmp:
        f = lambda name: os.path.join(tmp, name)  # noqa: E731
        for dtype in (torch.float32, torch.bfloat16):
            w = (torch.randn(2048, 2048, generator=g) * 0.02).to(dtype)
            save_file({"w": w}, f("base.safetensors"))
            for codec in ("fp32", "int8"):
                for rel in (1e-3, 1.0):
                    d = torch.randn(w.shape, generator=g)
                    d *= rel * w.float().norm() / d.norm()
                    Patch(tensors=encode_deltas([("w", d, w)], codec=codec)[0]).save(f("p"))
                    p = rws.load(f("p"))
                    res = rws.apply_file(f("base.safetensors"), [p], f("o.safetensors"), undo=True)
                    rws.remove_file(f("o.safetensors"), [p], f("b.safetensors"), undo=False)
                    back = load_file(f("b.safetensors"))["w"]
                    share = float((bits(back) == bits(w)).double().mean())
                    rws.remove_file(f("o.safetensors"), [p], f("u.safetensors"), strict=True)
                    assert torch.equal(bits(load_file(f("u.safetensors"))["w"]), bits(w))
                    size = os.path.getsize(res.undo_path)
                    share_ck = size / os.path.getsize(f("o.safetensors"))
                    print(f"{str(dtype)[6:]:9} {codec:5} {rel:8g} {100 * share:14.3f}% "
                          f"{res.report.undo.elements():14d} {size / 2**20:7.2f} MiB "
                          f"{100 * share_ck:12.2f}%")  # fmt: skip
    print("with the undo file: every element bit-exact, proven by the base fingerprint (strict)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dir", default="/tmp/rws-bench")
    ap.add_argument("--mode")
    ap.add_argument("--base")
    ap.add_argument("--patch")
    ap.add_argument("--out")
    ap.add_argument("--undo-table", action="store_true", help="only the exact-undo table")
    a = ap.parse_args()
    if a.undo_table:
        undo_table()
        return
    if a.mode:  # child
        print(json.dumps(run_mode(a.mode, a.base, a.patch, a.out)))
        return
    folder = Path(a.dir)
    folder.mkdir(parents=True, exist_ok=True)
    base, patch = make_inputs(folder, a.gib)
    gib_base, gib_patch = base.stat().st_size / 2**30, patch.stat().st_size / 2**30
    print(f"checkpoint {gib_base:.2f} GiB fp16, patch {gib_patch:.2f} GiB int8, ", end="")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {_load()}")
    for path in (base, patch):  # into the page cache: every mode reads cached inputs
        with open(path, "rb") as fh:
            while fh.read(64 << 20):
                pass
    modes = ("copy", "copy+wb", "naive", "rws", "rws+undo")
    results: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    for _ in range(a.repeats):
        for mode in results:  # interleaved: drifting machine load hits every mode alike
            out = folder / f"out-{mode}.safetensors"
            cmd = [
                sys.executable,
                __file__,
                "--mode",
                mode,
                "--base",
                str(base),
                "--patch",
                str(patch),
                "--out",
                str(out),
            ]
            res = json.loads(
                subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[
                    -1
                ]
            )
            results[mode].append(res)
            out.unlink(missing_ok=True)
            out.with_name(out.name.removesuffix(".safetensors") + ".undo.safetensors").unlink(
                missing_ok=True
            )
    med = {
        m: {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "cpu_s", "rss_mib")}
        for m, rs in results.items()
    }
    print(f"{'mode':8} {'median wall s':>14} {'(all runs)':>26} {'cpu s':>6} {'peak RSS MiB':>13}")
    for m, v in med.items():
        runs = " ".join(f"{r['wall_s']:.2f}" for r in results[m])
        print(f"{m:8} {v['wall_s']:14.2f} {runs:>26} {v['cpu_s']:6.2f} {v['rss_mib']:13.0f}")
    ratio = {m: med["rws"]["wall_s"] / med[m]["wall_s"] for m in modes}
    print(f"rws / copy wall time: {ratio['copy']:.2f}x (goal <= 2x)")
    print(f"rws / copy+wb wall time: {ratio['copy+wb']:.2f}x")
    print(f"rws / naive wall time: {ratio['naive']:.2f}x")
    rss = 100 * med["rws"]["rss_mib"] / med["naive"]["rss_mib"]
    print(f"rws / naive peak RSS: {rss:.1f}% (goal < 25%)")
    undo = results["rws+undo"][-1]
    print(
        f"rws --undo: {med['rws+undo']['wall_s'] / med['rws']['wall_s']:.2f}x the rws wall time; "
        f"undo file {undo['undo_mib']:.1f} MiB = {100 * undo['undo_mib'] / 2**10 / gib_base:.2f}% "
        f"of the checkpoint ({undo['undo_elements']:.0f} elements corrected)"
    )
    print(f"load average after: {_load()}")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
