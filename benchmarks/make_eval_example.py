"""Make ``docs/eval-report-example.{png,json}``: ``rws eval`` before/after a Gaussian-noise patch.

Trains small-cnn on the built-in digits (Adam 3e-3, batch 32, 8 epochs, seed 0), fine-tunes a copy
for 2 epochs on gaussian_noise-corrupted digits (severities 3 and 5), extracts the int8 patch, then
runs ``rws eval`` with 3 corruptions × 5 severities and PGD-10 (8/255) on the 450 test digits.

Run: ``python benchmarks/make_eval_example.py`` (about a minute on one CPU core).
"""

from __future__ import annotations

import copy
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

import rws
from rws.cli.app import app
from rws.cli.eval import eval_command
from rws.data import load_digits
from rws.models import create_model
from rws.robustness.corruptions import corrupt

DOCS = Path(__file__).resolve().parent.parent / "docs"
THREADS = 1


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(perm), 32):
            b = perm[i : i + 32]
            loss = nn.functional.cross_entropy(model(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def main() -> None:
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    data = load_digits()
    clean = train(create_model("small-cnn"), data.train.x, data.train.y, epochs=8, lr=3e-3)
    noisy = torch.cat(
        [corrupt(data.train.x, "gaussian_noise", s, generator=torch.Generator().manual_seed(s))
         for s in (3, 5)]
    )  # fmt: skip
    tuned = train(copy.deepcopy(clean), noisy, data.train.y.repeat(2), epochs=2, lr=1e-3)
    patch = rws.extract(clean, tuned, codec="int8", name="gaussian_noise")
    DOCS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        weights, patch_path = Path(tmp) / "clean.safetensors", Path(tmp) / "gauss.rws.safetensors"
        save_file(clean.state_dict(), weights)
        patch.save(patch_path)
        if not any(c.name == "eval" for c in app.registered_commands):
            app.command("eval")(eval_command)
        args = ["eval", "--arch", "small-cnn", "--weights", str(weights), "--patch",
                str(patch_path), "--data", "digits", "--corruptions", "gaussian_noise,fog,contrast",
                "--severities", "1-5", "--attack", "pgd", "--eps", "8/255", "--device", "cpu",
                "--out", str(DOCS / "eval-report-example.json"),
                "--plot", str(DOCS / "eval-report-example.png")]  # fmt: skip
        print("rws " + " ".join(a if tmp not in a else Path(a).name for a in args))
        try:
            app(args, prog_name="rws")
        except SystemExit as e:
            if e.code:
                sys.exit(e.code)


if __name__ == "__main__":
    main()
