"""``rws demo``: the Robust Weight Signatures story end to end on the built-in digits data.

1. an origin ``W0`` (ResNet-20 by default, or the small CNN, trained on clean digits from a seeded
   initialisation; ResNet-20 with the reference recipe's random crop),
2. a clean model ``Wc`` and one robust model ``Wk`` per corruption, each fine-tuned from ``W0``,
3. per corruption a signature ``RWSk`` (``rws extract --method rws --origin W0 --shallow K``),
   fp32 and int8,
4. operating points chosen on the validation split (never the test split): each signature's α
   under a 1-point clean budget, and the coefficients of their composition,
5. one evaluation of ``Wc`` with every variant as a patch on the same cached test inputs: each
   robust model (as its full fp32 delta), ``Wc + RWSk`` (fp32, int8, scaled by α, at its operating
   point), all signatures composed (``αk = 1/|K|`` and searched), each tested against ``Wc`` as
   ``rws eval`` does (McNemar per cell, Wilcoxon over images for pooled rows, Holm-adjusted).

Every step is cached in the output folder (a checkpoint is reused when its recorded settings match),
and training is resumable, so a second run only searches and re-evaluates.
"""

from __future__ import annotations

import copy
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from rws.analysis import plot_similarity, similarity
from rws.data import ImageDataset, load_digits
from rws.errors import UnknownNameError, UsageError
from rws.io.figures import save_figure
from rws.io.hashing import json_sha256
from rws.io.safetensors_read import TensorFile
from rws.methods.extract import extract
from rws.models import create_model
from rws.patching.patch import Patch, compose, load
from rws.recipes.compose import compose as compose_search
from rws.recipes.extract import search_settings
from rws.recipes.operating_point import search_operating_point, with_operating_point
from rws.robustness.corruptions import get_corruption
from rws.robustness.evaluate import evaluate
from rws.robustness.plots import summary_figure
from rws.robustness.report import Report
from rws.training import TrainConfig, TrainResult, finetune, init_model, save_result

ARCH = "resnet20"  # the default built-in model; ``small-cnn`` is the fast one
DEMO_KEY = "rws.demo"
# Signature layers per built-in model, counted as ``--shallow`` counts them (a conv with its BN):
# ResNet-20's stem and first stage (7 of its 20 layers, 5 % of its parameters), the small CNN's
# first 2 of 4 layers (conv1+bn1, conv2+bn2: 20 % of its parameters).
SHALLOW = {"resnet20": 7, "small-cnn": 2}
# The reference recipe's random crop (padding 4) per built-in model: the small CNN (3 convs, global
# average pool) trains without it: with crops its 4 epochs leave it at 92.9 % clean and its robust
# models at 38-72 % clean on the test digits (measured), against 96.0 % and 58-88 % without.
CROP = {"resnet20": 4, "small-cnn": 0}
ARCHS = tuple(SHALLOW)


@dataclass(frozen=True)
class DemoConfig:
    """Settings of the demo (all small enough for 2 CPU cores in a few minutes)."""

    arch: str = ARCH
    corruptions: tuple[str, ...] = ("impulse_noise", "fog", "contrast")
    severity: tuple[int, int] = (3, 5)  # robust models train on severities drawn from this range
    origin_epochs: int = 6
    finetune_epochs: int = 4
    lr: float = 3e-3
    shallow: int | None = None  # signature layers; None: ``SHALLOW[arch]``
    crop_padding: int | None = None  # random crop; None: ``CROP[arch]`` (no flips: see augment)
    codec: str = "int8"
    alphas: tuple[float, ...] = (0.25, 0.5, 1.0)
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)  # the evaluation's (training uses ``severity``)
    seed: int = 0
    batch_size: int = 32
    search: bool = True  # operating points (α per signature, composition) chosen on validation
    max_clean_drop: float = 1.0  # the searches' clean budget, accuracy points

    @property
    def layers(self) -> int:
        """The signature's layer count: ``shallow``, or the built-in model's default."""
        return self.shallow if self.shallow is not None else SHALLOW.get(self.arch, 2)

    @property
    def crop(self) -> int:
        """The random crop's padding: ``crop_padding``, or the built-in model's default."""
        return self.crop_padding if self.crop_padding is not None else CROP.get(self.arch, 0)


@dataclass
class DemoResult:
    """What the demo made: the evaluation report, signature files and their sizes."""

    report: Report
    out_dir: Path
    signatures: dict[str, Path]
    sizes: dict[str, int]  # signature file bytes per corruption (quantized codec)
    model_bytes: int  # the clean model as fp32 safetensors
    cached: list[str] = field(default_factory=list)  # steps reused from an earlier run
    operating_points: dict[str, Patch] = field(default_factory=dict)  # ``k.rws@auto`` per k
    composition: Patch | None = None  # the searched composition (its coefficients in provenance)


def _key(**parts: Any) -> str:
    """A checkpoint's cache key: the first 16 hex digits of the sha256 of its settings."""
    return json_sha256(parts)[:16]


def _robust_seed(cfg: DemoConfig, corruption: str) -> int:
    """A robust model's training seed: from its corruption's name, not its place in the list."""
    return cfg.seed + 2 + zlib.crc32(corruption.encode()) % 10_000


def _cached_model(
    path: Path, key: str, cfg: DemoConfig, build: Callable[[], TrainResult],
    data: ImageDataset, init_seed: int | None, cached: list[str],
) -> nn.Module:  # fmt: skip
    """Load ``path`` if it was written with ``key``; else train, save (atomic, with the run's
    provenance, so that ``rws extract`` knows a robust model's corruption) and return."""
    if path.is_file():
        tf = TensorFile(path)
        if tf.metadata.get(DEMO_KEY) == key:
            model = create_model(cfg.arch)
            model.load_state_dict({k: tf.get(k) for k in tf})
            tf.close()
            cached.append(path.name)
            return model.eval()
        tf.close()
    res = build()
    save_result(path, res, arch=cfg.arch, data=data, init_seed=init_seed,
                metadata={DEMO_KEY: key, "arch": cfg.arch})  # fmt: skip
    return res.model


def _train(
    start: nn.Module, data: ImageDataset, cfg: DemoConfig, epochs: int, corruptions: tuple[str, ...],
    seed: int, ckpt: Path, progress: bool,
) -> TrainResult:  # fmt: skip
    model = copy.deepcopy(start)
    tc = TrainConfig(
        epochs=epochs, lr=cfg.lr, optimizer="adam", schedule="cosine", batch_size=cfg.batch_size,
        weight_decay=0.0, corruptions=corruptions, severity=cfg.severity, seed=seed, device="cpu",
        crop_padding=cfg.crop,
    )  # fmt: skip
    return finetune(model, data, tc, checkpoint_dir=ckpt, progress=progress)


def _searched(
    clean: nn.Module, sigs: dict[str, Patch], data: ImageDataset, cfg: DemoConfig, progress: bool
) -> tuple[dict[str, Patch], Patch | None]:
    """Each signature at its operating point (α on its layers, chosen on the validation split
    under ``cfg.max_clean_drop``), and the searched composition of all of them."""
    auto = {}
    for k, sig in sigs.items():
        settings = search_settings(sig, corruptions=[k], max_clean_drop=cfg.max_clean_drop,
                                   copy="cycled", seed=cfg.seed)  # fmt: skip
        op = search_operating_point(clean, sig, data.val, settings, progress=progress)
        auto[k] = with_operating_point(sig, op).replace(name=f"{k}.rws@auto")
    both = None
    if len(sigs) > 1:
        both = compose_search(list(sigs.values()), search=True, model=clean, data=data.val,
                              max_clean_drop=cfg.max_clean_drop, copy="cycled", seed=cfg.seed,
                              device="cpu", progress=progress, name="all.rws (searched)")  # fmt: skip
    return auto, both


def run_demo(
    out_dir: str | os.PathLike, config: DemoConfig | None = None, *, progress: bool = False
) -> DemoResult:
    """Train, extract, evaluate; write checkpoints, signatures, ``report.json`` and plots.

    Example:
        >>> result = run_demo("rws-demo")  # doctest: +SKIP
        >>> result.report.variant("fog.rws@auto").clean  # doctest: +SKIP
    """
    cfg = config or DemoConfig()
    for k in cfg.corruptions:
        get_corruption(k)  # an unknown name fails now, listing the choices, not after training
    if cfg.finetune_epochs < 1 or cfg.origin_epochs < 1:
        raise UsageError("the demo needs at least 1 epoch per model")
    if cfg.arch not in SHALLOW:
        raise UnknownNameError("demo model", cfg.arch, list(SHALLOW))
    out = Path(out_dir)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    (out / "signatures").mkdir(exist_ok=True)
    data = load_digits()
    cached: list[str] = []

    keys: dict[str, str] = {}
    models: dict[str, nn.Module] = {}

    def step(name: str, parent: str | None, corruptions: tuple[str, ...], seed: int,
             epochs: int) -> nn.Module:  # fmt: skip
        """Train (or reuse) one checkpoint; its cache key covers exactly what made it."""
        keys[name] = _key(parent=keys.get(parent or ""), epochs=epochs, corruptions=corruptions,
                          severity=cfg.severity if corruptions else None, seed=seed, lr=cfg.lr,
                          batch_size=cfg.batch_size, arch=cfg.arch,
                          crop_padding=cfg.crop or None)  # fmt: skip

        def build() -> TrainResult:
            start = init_model(cfg.arch, 10, seed=seed) if parent is None else models[parent]
            ckpt = out / "checkpoints" / f"{name}-{keys[name]}"  # a changed setting: a new run
            return _train(start, data, cfg, epochs, corruptions, seed, ckpt, progress)

        path = out / f"{name}.safetensors"
        init_seed = seed if parent is None else None
        models[name] = _cached_model(path, keys[name], cfg, build, data, init_seed, cached)
        return models[name]

    step("origin", None, (), cfg.seed, cfg.origin_epochs)  # W0, read from its file below
    clean = step("clean", "origin", (), cfg.seed + 1, cfg.finetune_epochs)
    robust = {
        k: step(f"robust-{k}", "origin", (k,), _robust_seed(cfg, k), cfg.finetune_epochs)
        for k in cfg.corruptions
    }

    signatures: dict[str, Path] = {}
    sizes: dict[str, int] = {}
    variants: list[Patch | tuple[Patch, float]] = []
    sigs: dict[str, Patch] = {}
    for k, model in robust.items():
        full = extract(clean, model, codec="fp32", name=f"{k}.robust-model")
        tags = {"corruption": k, "dataset": "digits", "arch": cfg.arch}
        files = (out / "clean.safetensors", out / f"robust-{k}.safetensors")  # as `rws extract`
        sigs[k] = sig = extract(*files, method="rws", origin=out / "origin.safetensors",
                                codec="fp32", shallow=cfg.layers, order=clean, name=f"{k}.rws",
                                tags=tags)  # fmt: skip
        q = extract(*files, method="rws", origin=out / "origin.safetensors", codec=cfg.codec,
                    shallow=cfg.layers, order=clean, name=f"{k}.rws-{cfg.codec}",
                    tags=tags)  # fmt: skip
        path = out / "signatures" / f"{k}.rws.safetensors"
        q.save(path)
        signatures[k], sizes[k] = path, path.stat().st_size
        variants += [full, sig, load(path)] + [(sig, a) for a in cfg.alphas if a != 1.0]
    if len(sigs) > 1:
        uniform = [(s, 1.0 / len(sigs)) for s in sigs.values()]
        variants.append(compose(uniform, name="all.rws (α=1/|K|)"))
    auto, searched = _searched(clean, sigs, data, cfg, progress) if cfg.search else ({}, None)
    variants += [*auto.values(), *([searched] if searched is not None else [])]

    report = evaluate(
        clean, data, corruptions=list(cfg.corruptions), severities=list(cfg.severities),
        patches=variants, seed=cfg.seed, device="cpu", progress=progress,
    )  # fmt: skip
    report.save_json(out / "report.json")
    report.save_csv(out / "report.csv")
    report.save_plots(out / "report.png")
    save_figure(summary_figure(report.variants), out / "summary.png")
    if len(sigs) > 1:  # signatures of different corruptions should look different
        save_figure(plot_similarity(similarity(list(sigs.values()))),
                    out / "signatures-similarity.png")  # fmt: skip
    model_path = out / "clean.safetensors"
    return DemoResult(report, out, signatures, sizes, model_path.stat().st_size, cached,
                      auto, searched)  # fmt: skip
