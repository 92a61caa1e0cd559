"""``rws demo``: the Robust Weight Signatures story end to end on the built-in digits data.

1. an origin ``W0`` (small CNN trained on clean digits from a seeded initialisation),
2. a clean model ``Wc`` and one robust model ``Wk`` per corruption, each fine-tuned from ``W0``,
3. per corruption a signature ``RWSk`` (``rws extract --method rws --origin W0``), fp32 and int8,
4. one evaluation of ``Wc`` with every variant as a patch on the same cached inputs: each robust
   model (as its full fp32 delta), ``Wc + RWSk`` (fp32, int8, scaled by α), all signatures composed
   (``αk = 1/|K|``), each tested against ``Wc`` as ``rws eval`` does (McNemar per cell, Wilcoxon
   over images for pooled rows, Holm-adjusted).

Every step is cached in the output folder (a checkpoint is reused when its recorded settings match),
and training is resumable, so a second run only re-evaluates.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from rws.analysis import plot_similarity, similarity
from rws.data import ImageDataset, load_digits
from rws.errors import UsageError
from rws.io.figures import save_figure
from rws.io.hashing import json_sha256
from rws.io.safetensors_read import TensorFile
from rws.io.safetensors_write import save_tensors
from rws.methods.extract import extract
from rws.models import create_model
from rws.patching.patch import Patch, compose, load
from rws.robustness.corruptions import get_corruption
from rws.robustness.evaluate import evaluate
from rws.robustness.report import Report
from rws.training import TrainConfig, finetune, init_model

ARCH = "small-cnn"
DEMO_KEY = "rws.demo"


@dataclass(frozen=True)
class DemoConfig:
    """Settings of the demo (all small enough for 2 CPU cores in a few minutes)."""

    corruptions: tuple[str, ...] = ("gaussian_noise", "fog", "contrast")
    severity: tuple[int, int] = (3, 5)  # robust models train on severities drawn from this range
    origin_epochs: int = 6
    finetune_epochs: int = 4
    lr: float = 3e-3
    shallow: int = 2  # signature layers: conv1 (+bn1), conv2 (+bn2)
    codec: str = "int8"
    alphas: tuple[float, ...] = (0.25, 0.5, 1.0)
    seed: int = 0
    batch_size: int = 32


@dataclass
class DemoResult:
    """What the demo made: the evaluation report, signature files and their sizes."""

    report: Report
    out_dir: Path
    signatures: dict[str, Path]
    sizes: dict[str, int]  # signature file bytes per corruption (quantized codec)
    model_bytes: int  # the clean model as fp32 safetensors
    cached: list[str] = field(default_factory=list)  # steps reused from an earlier run


def _key(**parts: Any) -> str:
    """A checkpoint's cache key: the first 16 hex digits of the sha256 of its settings."""
    return json_sha256(parts)[:16]


def _cached_model(
    path: Path, key: str, build: Callable[[], nn.Module], cached: list[str]
) -> nn.Module:
    """Load ``path`` if it was written with ``key``; else build, save (atomic) and return."""
    if path.is_file():
        tf = TensorFile(path)
        if tf.metadata.get(DEMO_KEY) == key:
            model = create_model(ARCH)
            model.load_state_dict({k: tf.get(k) for k in tf})
            tf.close()
            cached.append(path.name)
            return model.eval()
        tf.close()
    model = build()
    save_tensors(path, model.state_dict(), {DEMO_KEY: key, "arch": ARCH})
    return model


def _train(
    start: nn.Module, data: ImageDataset, cfg: DemoConfig, epochs: int, corruptions: tuple[str, ...],
    seed: int, ckpt: Path, progress: bool,
) -> nn.Module:  # fmt: skip
    model = copy.deepcopy(start)
    tc = TrainConfig(
        epochs=epochs, lr=cfg.lr, optimizer="adam", schedule="cosine", batch_size=cfg.batch_size,
        weight_decay=0.0, corruptions=corruptions, severity=cfg.severity, seed=seed, device="cpu",
    )  # fmt: skip
    return finetune(model, data, tc, checkpoint_dir=ckpt, progress=progress).model


def run_demo(
    out_dir: str | os.PathLike, config: DemoConfig | None = None, *, progress: bool = False
) -> DemoResult:
    """Train, extract, evaluate; write checkpoints, signatures, ``report.json`` and plots.

    Example:
        >>> result = run_demo("rws-demo")  # doctest: +SKIP
        >>> result.report.variant("gaussian_noise.rws").clean  # doctest: +SKIP
    """
    cfg = config or DemoConfig()
    for k in cfg.corruptions:
        get_corruption(k)  # an unknown name fails now, listing the choices, not after training
    if cfg.finetune_epochs < 1 or cfg.origin_epochs < 1:
        raise UsageError("the demo needs at least 1 epoch per model")
    out = Path(out_dir)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    (out / "signatures").mkdir(exist_ok=True)
    data = load_digits()
    cached: list[str] = []

    keys: dict[str, str] = {}

    def step(name: str, parent: str | None, corruptions: tuple[str, ...], seed: int,
             epochs: int) -> nn.Module:  # fmt: skip
        """Train (or reuse) one checkpoint; its cache key covers exactly what made it."""
        keys[name] = _key(parent=keys.get(parent or ""), epochs=epochs, corruptions=corruptions,
                          severity=cfg.severity if corruptions else None, seed=seed, lr=cfg.lr,
                          batch_size=cfg.batch_size, arch=ARCH)  # fmt: skip

        def build() -> nn.Module:
            start = init_model(ARCH, 10, seed=seed) if parent is None else models[parent]
            ckpt = out / "checkpoints" / name
            return _train(start, data, cfg, epochs, corruptions, seed, ckpt, progress)

        return _cached_model(out / f"{name}.safetensors", keys[name], build, cached)

    models: dict[str, nn.Module] = {}
    models["origin"] = origin = step("origin", None, (), cfg.seed, cfg.origin_epochs)
    clean = step("clean", "origin", (), cfg.seed + 1, cfg.finetune_epochs)
    robust = {
        k: step(f"robust-{k}", "origin", (k,), cfg.seed + 2 + i, cfg.finetune_epochs)
        for i, k in enumerate(cfg.corruptions)
    }

    signatures: dict[str, Path] = {}
    sizes: dict[str, int] = {}
    variants: list[Patch | tuple[Patch, float]] = []
    fp32_sigs: list[Patch] = []
    for k, model in robust.items():
        full = extract(clean, model, codec="fp32", name=f"{k}.robust-model")
        tags = {"corruption": k, "dataset": "digits", "arch": ARCH}
        sig = extract(clean, model, method="rws", origin=origin, codec="fp32",
                      shallow=cfg.shallow, name=f"{k}.rws", tags=tags)  # fmt: skip
        q = extract(clean, model, method="rws", origin=origin, codec=cfg.codec,
                    shallow=cfg.shallow, name=f"{k}.rws-{cfg.codec}", tags=tags)  # fmt: skip
        path = out / "signatures" / f"{k}.rws.safetensors"
        q.save(path)
        signatures[k], sizes[k] = path, path.stat().st_size
        q = load(path)
        fp32_sigs.append(sig)
        variants += [full, sig, q] + [(sig, a) for a in cfg.alphas if a != 1.0]
    if len(fp32_sigs) > 1:
        both = compose([(s, 1.0 / len(fp32_sigs)) for s in fp32_sigs], name="all.rws (α=1/|K|)")
        variants.append(both)

    report = evaluate(
        clean, data, corruptions=list(cfg.corruptions), patches=variants, seed=cfg.seed,
        device="cpu", progress=progress,
    )  # fmt: skip
    report.save_json(out / "report.json")
    report.save_csv(out / "report.csv")
    report.save_plots(out / "report.png")
    if len(fp32_sigs) > 1:  # signatures of different corruptions should look different
        save_figure(plot_similarity(similarity(fp32_sigs)), out / "signatures-similarity.png")
    model_path = out / "clean.safetensors"
    return DemoResult(report, out, signatures, sizes, model_path.stat().st_size, cached)
