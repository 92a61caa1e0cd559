"""RiFT (Zhu et al., ICCV 2023): Robust Critical Fine-Tuning of an adversarially trained model.

1. MRC of every conv/linear module (:mod:`rws.recipes.criticality`) on PGD examples.
2. Fine-tune only the least critical module on clean training data: SGD, momentum 0.9, lr 1e-3,
   weight decay 5e-4, 10 epochs, lr ×0.1 at half, keeping the epoch with the best clean validation
   accuracy (the reference's optimiser and schedule; the reference keeps the best *test* epoch).
3. Measure ``W + α·(W_ft − W)`` for α = 0, 0.1, …, 1 on the validation split (:mod:`rws.recipes.alpha`)
   and keep the α with the best clean accuracy whose PGD accuracy is at most ``max_robust_drop``
   (0.1 point) below the AT model's (the reference picks by hand on the test set).

Two recipes (:data:`RIFT_RECIPES`, ``recipe=``, ``--recipe``) switch every choice where rws's own
departs from the reference code together:

============================  ===============================  ==================================
choice                        ``rws`` (default)                ``reference``
============================  ===============================  ==================================
MRC adversarial set           training split                   test split
MRC ascent batches            fixed order, 128                 shuffled (seeded) each pass, 512
MRC / α-search PGD step       ``2.5·eps/steps`` (2/255)        2/225 (the code's torchattacks step)
tensors trained               the module's weight, bias and    the module's weight only
                              its BatchNorm
other modules                 eval mode (BN statistics kept)   train mode: every BatchNorm
                                                               re-estimates its statistics
augmentation                  none                             random crop (4, reflect) and flip
patch                         the layer's tensors              the weight and every BatchNorm
                                                               statistic the fine-tuning changed
α-search robust accuracy      one PGD run                      worst of 3 runs (the paper's)
============================  ===============================  ==================================

Neither recipe selects on the test set (the reference's fine-tuning keeps the best test epoch and
its α is chosen by hand on test accuracies; both recipes use the validation split).

The patch (kind ``rift``, registered here) stores the exact ``W_ft − W`` (extracted with the
``delta`` method) with ``scale = α`` and, in its provenance (``method: rift``), the recipe, the
module, the MRC table, the α curve, the attack and the fine-tuning history.
With ``work_dir`` every step is kept on disk and a rerun continues where it stopped.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rws.data import load_dataset
from rws.data.types import ImageDataset
from rws.errors import UnknownNameError, UsageError
from rws.io.atomic import write_atomic
from rws.io.checkpoint import describe_source
from rws.io.hashing import state_sha256
from rws.methods.extract import extract
from rws.patching.format import register_kind
from rws.patching.patch import Patch
from rws.recipes.alpha import AlphaCurve, AlphaSettings, alpha_curve
from rws.recipes.criticality import MrcResult, MrcSettings, layers_of, mrc, trainable_modules
from rws.runtime.device import on_device
from rws.training.config import TrainConfig
from rws.training.loop import finetune
from rws.training.state import data_fingerprint

MRC_FILE = "mrc.json"
FINETUNE_DIR = "finetune"

register_kind(
    "rift",
    "RiFT: fine-tuned − adversarially trained, one module, applied at scale α",
    url="https://arxiv.org/abs/2308.02533",
)


def rift_train_config(**overrides: Any) -> TrainConfig:
    """The reference's optimiser and schedule for the module fine-tuning (clean data, lr ×0.1 at
    half, best epoch kept); what is trained and in which mode differ (see the module doc)."""
    base: dict[str, Any] = {
        "epochs": 10, "lr": 1e-3, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 128,
        "optimizer": "sgd", "schedule": "step", "milestones": (0.5,), "keep_best": True,
    }  # fmt: skip
    return TrainConfig(**{**base, **overrides})


@dataclass(frozen=True)
class RiftRecipe:
    """One RiFT recipe: every choice the ``rws`` and ``reference`` recipes make differently.

    Attributes:
        name: ``"rws"`` or ``"reference"``.
        mrc: the MRC settings (split, batch order and size, PGD step).
        train: :class:`TrainConfig` overrides on top of :func:`rift_train_config` (augmentation,
            mode of the frozen modules).
        trains: ``"layer"`` (the module's weight, bias and following norm layer) or ``"weight"``.
        patch: ``"layer"`` (the layer's tensors) or ``"changed"`` (every floating-point tensor the
            fine-tuning changed: the reference interpolates the whole state dict).
        attack_runs: PGD runs of the α search; robust accuracy is the worst. (The α search's PGD
            step is the MRC settings' ``attack_step_size``.)
    """

    name: str
    mrc: MrcSettings
    train: Mapping[str, Any]
    trains: str
    patch: str
    attack_runs: int


_REF_STEP = 2 / 225  # the reference code's torchattacks.PGD(alpha=2/225): a typo for 2/255, kept

RIFT_RECIPES: dict[str, RiftRecipe] = {
    "rws": RiftRecipe("rws", MrcSettings(), {}, "layer", "layer", 1),
    "reference": RiftRecipe(
        "reference",
        MrcSettings(split="test", shuffle=True, batch_size=512, attack_step_size=_REF_STEP),
        {"crop_padding": 4, "crop_fill": "reflect", "flip": True, "frozen_mode": "train"},
        "weight", "changed", 3,
    ),
}  # fmt: skip


def rift_recipe(name: str) -> RiftRecipe:
    """The recipe called ``name`` (``rws`` or ``reference``).

    Raises:
        UnknownNameError: another name.
    """
    if name not in RIFT_RECIPES:
        raise UnknownNameError("RiFT recipe", str(name), list(RIFT_RECIPES))
    return RIFT_RECIPES[name]


def _changed(model: nn.Module, tuned: nn.Module) -> list[str]:
    """Floating-point state tensors whose values the fine-tuning changed, in state order."""
    a, b = model.state_dict(), tuned.state_dict()
    return [k for k, t in a.items()
            if t.is_floating_point() and not torch.equal(t, b[k].to(t.device))]  # fmt: skip


@dataclass
class RiftResult:
    """Everything a RiFT run found: the patch and the steps that led to it."""

    patch: Patch
    mrc: MrcResult
    module: str
    curve: AlphaCurve
    history: list[dict[str, Any]] = field(default_factory=list)
    tuned: nn.Module | None = None


def _mrc_cached(
    model: nn.Module, data: ImageDataset, settings: MrcSettings, work: Path | None,
    device: str, progress: bool,
) -> MrcResult:  # fmt: skip
    """MRC, read back from ``work/mrc.json`` when it was measured on the same weights, data and
    settings, else computed (and written there)."""
    path = work / MRC_FILE if work else None
    key = {"model_sha256": state_sha256(model.state_dict()), "data": data_fingerprint(data)}
    if path is not None and path.is_file():
        try:
            stored = json.loads(path.read_text())
            cached = MrcResult.from_dict(stored)
        except (ValueError, KeyError, TypeError):
            stored, cached = {}, None
        same = all(stored.get(k) == v for k, v in key.items())
        if same and cached is not None and cached.settings == settings:
            return cached
    res = mrc(model, data, settings=settings, device=device, progress=progress)
    if path is not None:
        write_atomic(path, json.dumps({**key, **res.to_dict()}, indent=2) + "\n")
    return res


def rift(
    model: nn.Module,
    data: ImageDataset | str,
    *,
    recipe: str = "rws",
    module: str | None = None,
    mrc_settings: MrcSettings | None = None,
    train_config: TrainConfig | None = None,
    alpha_settings: AlphaSettings | None = None,
    codec: str = "fp32",
    work_dir: str | os.PathLike | None = None,
    device: str = "auto",
    name: str = "",
    description: str = "",
    tags: Mapping[str, str] | None = None,
    source: str | os.PathLike | None = None,
    progress: bool = False,
) -> RiftResult:
    """Run RiFT on an adversarially trained ``model`` and return the patch with its facts.

    Args:
        model: the AT model (left unchanged; the fine-tuning runs on a copy).
        data: the dataset (training split for MRC and fine-tuning, validation split for α) or a
            spec such as ``"digits"``.
        recipe: ``"rws"`` or ``"reference"`` (:data:`RIFT_RECIPES`; the module doc's table); it
            supplies every setting not given below, and decides which tensors train and which
            the patch holds.
        module: fine-tune this module instead of the least critical one (MRC is still measured).
        mrc_settings, train_config, alpha_settings: override the recipe's settings of the three
            steps (defaults: the recipe's MRC settings, :func:`rift_train_config` with the
            recipe's overrides, and an α grid 0…1 with the clean criterion,
            ``max_robust_drop=0.1`` (points) and the MRC attack's ε and steps).
        codec: how the delta is stored (``fp32`` keeps it exact).
        work_dir: keep ``mrc.json`` and the fine-tuning checkpoints here; a rerun resumes.
        device: ``auto``, ``cpu`` or ``cuda[:n]``.
        name, description, tags: labels stored in the patch.
        source: the AT model's checkpoint file, recorded (name and sha256) as the patch's base.
        progress: rich progress bars on stderr.

    Returns:
        A :class:`RiftResult`; ``result.patch`` applies RiFT to the AT model's weights.

    Raises:
        UsageError: an unknown module or bad settings.

    Example:
        >>> res = rws.rift(at_model, "digits", work_dir="rift-run")  # doctest: +SKIP
        >>> res.patch.save("rift.safetensors")  # doctest: +SKIP
    """
    rec = rift_recipe(recipe)
    dataset = load_dataset(data) if isinstance(data, str) else data
    ms = mrc_settings or rec.mrc
    work = Path(work_dir) if work_dir is not None else None
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
    layers = dict(layers_of(model))
    if module is not None and module not in layers:
        raise UsageError(
            f"--module {module!r}: not a conv/linear module; use one of {', '.join(layers)}"
        )
    crit = _mrc_cached(model, dataset, ms, work, device, progress)
    chosen = module or crit.least_critical.module
    cfg = train_config or rift_train_config(**rec.train)
    trainable = (
        [f"{chosen}.weight"] if rec.trains == "weight" else trainable_modules(layers[chosen])
    )
    cfg = TrainConfig.from_dict({**cfg.to_dict(), "trainable": list(trainable), "device": device,
                                 "keep_best": True})  # fmt: skip
    tuned = copy.deepcopy(model)
    ckdir = work / FINETUNE_DIR if work is not None else None
    res = finetune(tuned, dataset, cfg, checkpoint_dir=ckdir, progress=progress)
    include = _changed(model, tuned) if rec.patch == "changed" else list(layers[chosen])
    delta = extract(model, tuned, method="delta", codec=codec, include=include)
    a_settings = alpha_settings or AlphaSettings(
        attack_eps=ms.attack_eps, attack_steps=ms.attack_steps, seed=ms.seed, copy="cycled",
        attack_step_size=ms.attack_step_size, attack_runs=rec.attack_runs,
    )  # fmt: skip
    with on_device(model, device):
        curve = alpha_curve(model, delta, dataset.val, a_settings, progress=progress)
    attack_info = {"method": "pgd", "norm": "linf", "eps": a_settings.attack_eps,
                   "steps": a_settings.attack_steps, "step_size": a_settings.attack_step_size,
                   "runs": a_settings.attack_runs}  # fmt: skip
    history = [h.to_dict() for h in res.history]
    for h in history:
        h.pop("seconds", None)
    prov = {
        **delta.provenance,
        "method": "rift",
        "recipe": rec.name,
        "module": chosen,
        "mrc": {m.module: m.mrc for m in crit.modules},
        "mrc_table": [{k: v for k, v in asdict(m).items() if k != "tensors"} for m in crit.modules],
        "mrc_settings": asdict(ms),
        "attack": attack_info,
        "alpha": curve.chosen.alpha,
        "alpha_curve": curve.to_dict(),
        "finetune": {"config": cfg.to_dict(), "best_epoch": res.best_epoch, "history": history},
        "data": dataset.name,
    }
    if source is not None:
        prov["base"] = describe_source(source)
    patch = delta.replace(kind="rift", scale=curve.chosen.alpha, name=name or f"rift-{chosen}",
                          description=description, tags=dict(tags or {}), provenance=prov)  # fmt: skip
    return RiftResult(patch, crit, chosen, curve, history, tuned)


__all__ = ["RIFT_RECIPES", "RiftRecipe", "RiftResult", "rift", "rift_recipe", "rift_train_config"]
