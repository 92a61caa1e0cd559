"""What a training run is: its config (validated, JSON round trip), per-epoch statistics and result.

Also the integer and float validators the recipes' settings share with :class:`TrainConfig`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from rws.data.severity import severity_range
from rws.errors import UnknownNameError, UsageError
from rws.robustness.corruptions import get_corruption
from rws.runtime.checks import check_float, check_int
from rws.runtime.device import DEVICE_PATTERN

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("step", "cosine", "constant")
ATTACKS = ("", "pgd")
_LATER = (
    "milestones",
    "attack",
    "eps",
    "attack_steps",
    "attack_step_size",
    "trainable",
    "keep_best",
    "crop_padding",
    "crop_fill",
    "flip",
    "frozen_mode",
)

__all__ = ["EpochStats", "TrainConfig", "TrainResult"]


@dataclass(frozen=True)
class TrainConfig:
    """How to fine-tune; the defaults are the RWS reference's (robust models at severity 5).

    Attributes:
        epochs: passes over the training split (≥ 1); the reference runs 50.
        lr: initial learning rate (> 0).
        momentum: SGD momentum, or Adam's β1, in [0, 1).
        weight_decay: L2 penalty on every parameter (≥ 0), as in the reference.
        batch_size: images per step.
        optimizer: ``"sgd"`` or ``"adam"``.
        schedule: ``"step"`` (×0.1 at each of ``milestones``, by default 40% and 80% of the
            epochs, the reference's 20/40 of 50), ``"cosine"`` (per epoch, from ``lr`` towards 0)
            or ``"constant"``.
        seed: seeds the one generator behind shuffling, corruption draws and dropout.
        corruptions: names drawn from, one per batch; empty trains on clean data.
        severity: inclusive range ``(lo, hi)`` drawn from per batch; ``(s, s)`` is fixed.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:n]"``.
        milestones: fractions of ``epochs`` where ``"step"`` multiplies the lr by 0.1 (RiFT's
            module fine-tuning uses ``(0.5,)``).
        attack: ``""`` trains on the (corrupted) images as they are; ``"pgd"`` is PGD adversarial
            training (Madry et al.): every batch is replaced by L∞ PGD examples made against the
            model in eval mode, and ``val_acc`` is PGD accuracy on the validation split.
        eps, attack_steps, attack_step_size: the attack's radius, iterations and step
            (``None``: ``2.5·eps/attack_steps``, 2/255 for 8/255 and 10 steps).
        trainable: module names (as in ``named_modules()``) or parameter names (e.g.
            ``"conv2.weight"``) to train; every other parameter is frozen and, with
            ``frozen_mode="eval"``, every other module kept in eval mode (BatchNorm statistics
            included). Empty trains the whole model.
        keep_best: return (and checkpoint) the weights of the epoch with the best ``val_acc``
            instead of the last epoch's.
        crop_padding: the reference recipes' random crop: each training image (after its
            corruption, as the reference crops CIFAR-10-C images) zero-padded by this many pixels
            and cropped back at a random offset; 0 (the default) is no augmentation. No flips
            (:mod:`rws.training.augment` says why).
        crop_fill: the crop's padding, ``"zero"`` or ``"reflect"`` (the RiFT reference's).
        flip: mirror each training image left-right with probability 0.5 (the reference recipes'
            flip; off by default, wrong for digits).
        frozen_mode: the mode of the modules outside ``trainable``: ``"eval"`` (rws's: the change
            stays in the trained modules) or ``"train"`` (the RiFT reference's: the whole model
            runs in train mode, so every BatchNorm re-estimates its running statistics).
        extra: unknown keys met by :meth:`from_dict`, kept and written back by :meth:`to_dict`.
    """

    epochs: int = 50
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    optimizer: Literal["sgd", "adam"] = "sgd"
    schedule: Literal["step", "cosine", "constant"] = "step"
    seed: int = 0
    corruptions: tuple[str, ...] = ()
    severity: tuple[int, int] = (5, 5)
    device: str = "auto"
    milestones: tuple[float, ...] = (0.4, 0.8)
    attack: Literal["", "pgd"] = ""
    eps: float = 8 / 255
    attack_steps: int = 10
    attack_step_size: float | None = None
    trainable: tuple[str, ...] = ()
    keep_best: bool = False
    crop_padding: int = 0
    crop_fill: Literal["zero", "reflect"] = "zero"
    flip: bool = False
    frozen_mode: Literal["eval", "train"] = "eval"
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        put = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        check_int("epochs", self.epochs, 1)
        check_int("batch_size", self.batch_size, 1)
        check_int("seed", self.seed, 0)
        put("lr", check_float("lr", self.lr, 0.0))
        if self.lr == 0:
            raise UsageError("lr must be a number > 0, got 0")
        put("momentum", check_float("momentum", self.momentum, 0.0, 1.0))
        put("weight_decay", check_float("weight_decay", self.weight_decay, 0.0))
        if self.optimizer not in OPTIMIZERS:
            raise UnknownNameError("optimizer", str(self.optimizer), list(OPTIMIZERS))
        if self.schedule not in SCHEDULES:
            raise UnknownNameError("lr schedule", str(self.schedule), list(SCHEDULES))
        names = (self.corruptions,) if isinstance(self.corruptions, str) else self.corruptions
        put("corruptions", tuple(names))
        for name in self.corruptions:
            get_corruption(name)  # UnknownNameError listing the choices
        put("severity", severity_range(self.severity))
        if not isinstance(self.device, str) or not DEVICE_PATTERN.match(self.device):
            raise UsageError(f"unknown device {self.device!r}; choose cpu, cuda[:n] or auto")
        put("milestones", tuple(float(m) for m in self.milestones))
        if not all(0.0 < m < 1.0 for m in self.milestones):
            raise UsageError(f"milestones must be fractions in (0, 1), got {self.milestones!r}")
        if self.attack not in ATTACKS:
            raise UnknownNameError("training attack", str(self.attack), [a for a in ATTACKS if a])
        put("eps", check_float("eps", self.eps, 0.0))
        check_int("attack_steps", self.attack_steps, 1)
        if self.attack_step_size is not None:
            put("attack_step_size", check_float("attack_step_size", self.attack_step_size, 0.0))
        names = (self.trainable,) if isinstance(self.trainable, str) else self.trainable
        put("trainable", tuple(str(n) for n in names))
        if not isinstance(self.keep_best, bool):
            raise UsageError(f"keep_best must be true or false, got {self.keep_best!r}")
        check_int("crop_padding", self.crop_padding, 0)
        if self.crop_fill not in ("zero", "reflect"):
            raise UsageError(f"crop_fill must be 'zero' or 'reflect', not {self.crop_fill!r}")
        if not isinstance(self.flip, bool):
            raise UsageError(f"flip must be true or false, got {self.flip!r}")
        if self.frozen_mode not in ("eval", "train"):
            raise UsageError(f"frozen_mode must be 'eval' or 'train', not {self.frozen_mode!r}")
        put("extra", dict(self.extra))

    @property
    def step_size(self) -> float:
        """The adversarial step: ``attack_step_size`` or ``2.5·eps/attack_steps``."""
        if self.attack_step_size is not None:
            return self.attack_step_size
        return 2.5 * self.eps / self.attack_steps

    def lr_at(self, epoch: int) -> float:
        """The learning rate of epoch ``epoch`` (0-based)."""
        if self.schedule == "cosine":
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / self.epochs))
        if self.schedule == "step":
            milestones = [max(1, math.floor(f * self.epochs + 0.5)) for f in self.milestones]
            return self.lr * 0.1 ** sum(epoch >= m for m in milestones)
        return self.lr

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (tuples as lists), unknown keys from :meth:`from_dict` included."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        out["corruptions"], out["severity"] = list(self.corruptions), list(self.severity)
        out["milestones"], out["trainable"] = list(self.milestones), list(self.trainable)
        for f in dataclasses.fields(self):  # later options are written only when set, so that
            if f.name in _LATER and getattr(self, f.name) == f.default:  # older runs' files
                del out[f.name]  # stay byte-identical
        return {**self.extra, **out}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys go to ``extra``."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        for key in ("corruptions", "trainable", "milestones"):
            if key in known and not isinstance(known[key], str):
                known[key] = tuple(known[key])
        return cls(**known, extra={k: v for k, v in d.items() if k not in names})


@dataclass(frozen=True)
class EpochStats:
    """One epoch: 1-based ``epoch``, its ``lr``, mean loss and accuracy on the (corrupted,
    adversarial) training batches, validation accuracy under the training conditions
    (``val_acc``: corrupted as in training, PGD accuracy for adversarial training, clean for a
    clean run) and on clean images (``val_clean_acc``), and wall time."""

    epoch: int
    lr: float
    train_loss: float
    train_acc: float
    val_acc: float
    val_clean_acc: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-able dict."""
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    """What :func:`rws.training.finetune` returns: the final model (eval mode), the per-epoch
    ``history`` (all epochs, resumed ones included), the epoch with the best ``val_acc`` (1-based)
    and how many epochs were loaded from the checkpoint folder rather than run."""

    model: nn.Module
    config: TrainConfig
    history: list[EpochStats]
    best_epoch: int
    resumed_epochs: int = 0

    @property
    def final(self) -> EpochStats:
        """The last epoch's statistics."""
        return self.history[-1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (without the model)."""
        return {
            "config": self.config.to_dict(), "best_epoch": self.best_epoch,
            "resumed_epochs": self.resumed_epochs, "history": [h.to_dict() for h in self.history],
        }  # fmt: skip
