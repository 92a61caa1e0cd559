"""Figure 1 (issue 2): size of shallow-layer patches of a CIFAR ResNet-18 vs its full fp32 checkpoint.

A ResNet-18 (CIFAR stem, 11.2 M parameters) takes a few SGD steps on digits (the base), then a few
more on Gaussian-noise digits (the tuned model). Patches of the first K = 1, 3, 5 layers are
extracted with the int8, bnb8 and nf4 codecs (blocksize 64; 1-D and small tensors stay fp16/fp32,
the default since the compression issue) and nf4 after top-k sparsity (density 0.25); the script
prints each file's size, its header's share,
the ratio to the full fp32 safetensors checkpoint (the RWS paper: "up to 13×"), the ratio to the
touched tensors in fp32, and the relative reconstruction error ‖decode(δ) − δ‖ / ‖δ‖. The RWS
reference setting, VGG-16 (no BN) with its first K = 7 convs, is added for comparison.

    python benchmarks/bench_size.py
"""

from __future__ import annotations

import os
import struct
import tempfile

import torch
from safetensors.torch import save_file
from torch import nn

import rws
from rws.data import load_digits
from rws.models import create_model

STEPS, BATCH = 10, 32
VARIANTS = (("int8", None), ("bnb8", None), ("nf4", None), ("nf4", "topk"))  # (codec, sparsify)
DENSITY = 0.25
MODELS = {"resnet18": (1, 3, 5), "vgg16": (7,)}


def sgd_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(STEPS):
        idx = torch.randint(0, len(y), (BATCH,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def main() -> None:
    torch.manual_seed(0)
    data = load_digits()
    noisy = (data.train.x + 0.3 * torch.randn(data.train.x.shape)).clamp(0, 1)
    for arch, k_list in MODELS.items():
        measure(arch, k_list, data.train.x, noisy, data.train.y)


def measure(arch: str, k_list: tuple[int, ...], x, noisy, y) -> None:
    base = create_model(arch)
    sgd_steps(base, x, y, seed=0)
    tuned = create_model(arch)
    tuned.load_state_dict(base.state_dict())
    sgd_steps(tuned, noisy, y, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        full = os.path.join(tmp, "full.safetensors")
        save_file({k: v.float() for k, v in base.state_dict().items()}, full)
        full_bytes = os.path.getsize(full)
        n_params = sum(p.numel() for p in base.parameters())
        print(f"\n{arch}: {n_params / 1e6:.2f} M parameters, "
              f"full fp32 checkpoint {full_bytes / 2**20:.1f} MiB")  # fmt: skip
        print(f"{'K':>2} {'codec':9} {'last layer':<16} {'params':>8} {'patch KiB':>9} "
              f"{'header':>6} {'vs model':>9} {'vs touched':>10} {'rel. error':>10}")  # fmt: skip
        for k in k_list:
            exact = rws.extract(base, tuned, codec="fp32", shallow=k)
            norm = sum(float(exact.delta(n).pow(2).sum()) for n in exact.names()) ** 0.5
            for codec, sparsify in VARIANTS:
                density = DENSITY if sparsify else 1.0
                patch = rws.extract(base, tuned, codec=codec, shallow=k, sparsify=sparsify,
                                    density=density)  # fmt: skip
                path = os.path.join(tmp, f"k{k}-{codec}.safetensors")
                patch.save(path)
                size = os.path.getsize(path)
                with open(path, "rb") as fh:
                    head = 8 + struct.unpack("<Q", fh.read(8))[0]
                label = codec + (f"+{sparsify}" if sparsify else "")
                diff = sum(
                    float((patch.delta(n) - exact.delta(n)).pow(2).sum()) for n in exact.names()
                )
                last = patch.provenance["selection"]["layers"][-1]
                print(f"{k:>2} {label:9} {last:<16} {patch.numel():8d} {size / 1024:9.1f} "
                      f"{100 * head / size:5.1f}% "
                      f"{full_bytes / size:8.1f}× {4 * patch.numel() / size:9.1f}× "
                      f"{diff**0.5 / norm:10.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
