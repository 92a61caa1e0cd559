"""What a training run is and keeps: its config, per-epoch statistics and checkpoint file.

:class:`TrainConfig` (validated, JSON round trip), :class:`EpochStats`, :class:`TrainResult`, and
the checkpoint ``train_state.safetensors`` (no pickle), laid out as:

- ``model.<name>``: every tensor of the model's ``state_dict()`` (buffers included);
- ``opt.state.<index>.<key>``: every tensor of the optimizer's per-parameter state, e.g.
  ``opt.state.3.momentum_buffer`` or ``opt.state.0.step``;
- ``rng.train``: the training ``torch.Generator``'s state (uint8);
- ``best.<name>``: (``keep_best`` runs) the state dict of the best epoch so far;
- ``__metadata__["rws.train_state"]``: JSON with ``format``, ``epoch`` (completed epochs), the
  optimizer's ``param_groups`` and non-tensor state values, the config, the history and the
  fingerprints of the initial weights and of the data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from rws.data.types import ImageDataset
from rws.errors import CheckpointError, IntegrityError, UnknownNameError, UsageError
from rws.io.safetensors_io import TensorFile, save_tensors, tensor_bytes
from rws.robustness.corruptions import get_corruption
from rws.runtime.device import DEVICE_PATTERN

STATE_FILE = "train_state.safetensors"
META_KEY = "rws.train_state"
FORMAT = 1
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
)
_MAY_CHANGE_ON_RESUME = ("epochs", "device", "extra")
_MODEL, _OPT, _RNG, _BEST = "model.", "opt.state.", "rng.train", "best."


def check_int(name: str, value: object, low: int) -> int:
    """``value`` if it is an integer ≥ ``low``; else ``UsageError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UsageError(f"{name} must be an integer ≥ {low}, got {value!r}")
    return value


def check_float(name: str, value: object, low: float, high: float = math.inf) -> float:
    """``value`` as a float if finite and in ``[low, high)``; else ``UsageError`` naming ``name``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not low <= value < high:  # type: ignore[arg-type]
        span = f"in [{low:g}, {high:g})" if high < math.inf else f"≥ {low:g}"
        raise UsageError(f"{name} must be a number {span}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def severity_range(severity: int | Sequence[int]) -> tuple[int, int]:
    """``3`` → ``(3, 3)``; ``(1, 5)`` → ``(1, 5)``; raises ``UsageError`` outside 1–5 or if lo > hi."""
    pair = (severity, severity) if isinstance(severity, int) else tuple(severity)
    if (
        len(pair) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= 5 for s in pair)
        or pair[0] > pair[1]
    ):
        raise UsageError(f"severity must be 1–5 or a range lo-hi within 1–5, got {severity!r}")
    return int(pair[0]), int(pair[1])


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
        trainable: module names (as in ``named_modules()``) to train; every other parameter is
            frozen and every other module kept in eval mode (BatchNorm statistics included).
            Empty trains the whole model.
        keep_best: return (and checkpoint) the weights of the epoch with the best ``val_acc``
            instead of the last epoch's.
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
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    """What :func:`finetune` returns: the final model (eval mode), the per-epoch ``history`` (all
    epochs, resumed ones included), the epoch with the best ``val_acc`` (1-based) and how many
    epochs were loaded from the checkpoint folder rather than run."""

    model: nn.Module
    config: TrainConfig
    history: list[EpochStats]
    best_epoch: int
    resumed_epochs: int = 0

    @property
    def final(self) -> EpochStats:
        return self.history[-1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (without the model)."""
        return {
            "config": self.config.to_dict(), "best_epoch": self.best_epoch,
            "resumed_epochs": self.resumed_epochs, "history": [h.to_dict() for h in self.history],
        }  # fmt: skip


@dataclass
class TrainState:
    """What a training checkpoint holds.

    Attributes:
        model: the model's state dict.
        optimizer: an optimizer ``state_dict()`` (integer parameter indices as keys).
        generator: the training generator's state (``torch.Generator.get_state()``).
        epoch: completed epochs.
        info: the trainer's own JSON-able facts (config, history, fingerprints).
        best: the state dict of the best epoch so far (``keep_best`` runs), else None.
    """

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    generator: torch.Tensor
    epoch: int
    info: dict[str, Any]
    best: dict[str, torch.Tensor] | None = None


def flatten_optimizer_state(
    state_dict: Mapping[str, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer ``state_dict()`` into named tensors and JSON-able rest.

    Returns:
        ``({"opt.state.<i>.<key>": tensor}, {"param_groups": [...], "values": {"<i>": {key: v}}})``
        where ``values`` keeps the per-parameter state entries that are not tensors.
    """
    tensors: dict[str, torch.Tensor] = {}
    values: dict[str, dict[str, Any]] = {}
    for idx, entry in state_dict["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{_OPT}{int(idx)}.{key}"] = value.detach().cpu()
            else:
                values.setdefault(str(int(idx)), {})[key] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()}
              for g in state_dict["param_groups"]]  # fmt: skip
    return tensors, {"param_groups": groups, "values": values}


def unflatten_optimizer_state(
    tensors: Mapping[str, torch.Tensor], rest: Mapping[str, Any]
) -> dict[str, Any]:
    """Inverse of :func:`flatten_optimizer_state` (lists other than ``params`` become tuples)."""
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        idx, _, key = name[len(_OPT) :].partition(".")
        state.setdefault(int(idx), {})[key] = t
    for idx, entry in rest["values"].items():
        state.setdefault(int(idx), {}).update(entry)
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
              for g in rest["param_groups"]]  # fmt: skip
    return {"state": dict(sorted(state.items())), "param_groups": groups}


def save_train_state(path: str | os.PathLike, state: TrainState) -> None:
    """Write a training checkpoint atomically (temp file, fsync, rename)."""
    opt_tensors, opt_rest = flatten_optimizer_state(state.optimizer)
    tensors = {_MODEL + k: v.detach() for k, v in state.model.items()}
    tensors.update(opt_tensors)
    tensors[_RNG] = state.generator
    if state.best is not None:
        tensors.update({_BEST + k: v.detach() for k, v in state.best.items()})
    meta = {"format": FORMAT, "epoch": state.epoch, "optimizer": opt_rest, **state.info}
    save_tensors(path, tensors, {META_KEY: json.dumps(meta)})


def load_train_state(path: str | os.PathLike) -> TrainState:
    """Read a checkpoint written by :func:`save_train_state`.

    Raises:
        InputFileError: unreadable file. CheckpointError: not a training checkpoint of this format.
    """
    tf = TensorFile(path)
    try:
        try:
            meta = json.loads(tf.metadata[META_KEY])
            epoch, opt_rest = int(meta.pop("epoch")), meta.pop("optimizer")
            fmt = meta.pop("format")
        except (KeyError, TypeError, ValueError, json.JSONDecodeError):
            raise CheckpointError(
                path, f"not an rws training checkpoint (no valid {META_KEY!r} metadata)"
            ) from None
        if fmt != FORMAT:
            raise CheckpointError(path, f"training checkpoint format {fmt!r}; this rws reads 1")
        if _RNG not in tf:
            raise CheckpointError(path, f"training checkpoint without {_RNG!r}")
        model = {k[len(_MODEL) :]: tf.get(k) for k in tf if k.startswith(_MODEL)}
        opt = unflatten_optimizer_state({k: tf.get(k) for k in tf if k.startswith(_OPT)}, opt_rest)
        best = {k[len(_BEST) :]: tf.get(k) for k in tf if k.startswith(_BEST)}
        return TrainState(model, opt, tf.get(_RNG), epoch, meta, best or None)
    finally:
        tf.close()


def state_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """One sha256 over names, dtypes, shapes and bytes of a state dict, in its order."""
    h = hashlib.sha256()
    for name, t in tensors.items():
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()


def data_fingerprint(data: ImageDataset) -> dict[str, Any]:
    """Name, size and one sha256 of the training and validation images and labels."""
    h = hashlib.sha256()
    for split in (data.train, data.val):
        h.update(f"{list(split.x.shape)}|".encode())
        h.update(state_sha256({"x": split.x.contiguous(), "y": split.y.contiguous()}).encode())
    return {"name": data.name, "n_train": len(data.train), "sha256": h.hexdigest()}


def check_resume(st: TrainState, path: Path, config: TrainConfig, info: Mapping[str, Any]) -> None:
    """Refuse to continue ``st`` under ``config`` unless it is the same run.

    ``info`` holds this run's ``init_sha256`` and ``data`` fingerprints. ``epochs`` may grow when
    the completed epochs' learning rates stay the same; ``device`` may change.

    Raises:
        UsageError: another config. IntegrityError: other initial weights or data.
        CheckpointError: no readable config in the checkpoint.
    """
    try:
        old = TrainConfig.from_dict(st.info["config"])
    except (KeyError, TypeError, UsageError) as exc:
        raise CheckpointError(path, f"holds no valid training config ({exc})") from None
    diffs = [
        f"{f.name} {getattr(old, f.name)!r} → {getattr(config, f.name)!r}"
        for f in dataclasses.fields(TrainConfig)
        if f.name not in _MAY_CHANGE_ON_RESUME and getattr(old, f.name) != getattr(config, f.name)
    ]
    if diffs:
        raise UsageError(
            f"{path}: holds a run with another config ({'; '.join(diffs)}); resume with the "
            "same options or use a new checkpoint folder"
        )
    if st.epoch > config.epochs:
        raise UsageError(
            f"{path}: already holds {st.epoch} epochs, more than the {config.epochs} asked for"
        )
    done = [h["lr"] for h in st.info.get("history", [])]
    if done != [config.lr_at(e) for e in range(st.epoch)]:
        raise UsageError(
            f"{path}: its {st.epoch} completed epochs followed another learning-rate schedule than "
            f"{config.epochs} epochs of {config.schedule!r} would; use a new checkpoint folder"
        )
    if st.info.get("init_sha256") != info["init_sha256"]:
        raise IntegrityError(
            f"{path}: the run started from other initial weights; pass the same weights (or "
            "seed) or use a new checkpoint folder"
        )
    if st.info.get("data") != info["data"]:
        raise IntegrityError(
            f"{path}: the run used other data ({st.info.get('data', {}).get('name')!r}); pass "
            "the same data or use a new checkpoint folder"
        )
