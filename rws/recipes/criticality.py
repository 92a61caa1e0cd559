"""Module robust criticality (RiFT, Zhu et al. 2023): how much one module's weights matter for
robustness.

For a module ``M`` with weight ``W`` (a conv or linear; its bias and following BatchNorm belong
to the same *layer* but are not perturbed, as in the reference), over a fixed set of adversarial
examples ``(x_adv, y)`` made once against the model::

    MRC(M) = max_{‖ΔW‖ ≤ ε·‖W‖} L(W + ΔW) − L(W)

found by the reference's rule: plain gradient *ascent* on the mean cross-entropy, one step of
size ``lr`` per batch, ``passes`` passes over the set, the perturbation projected back onto the
ball after each pass and the loss of the whole set measured there; MRC is the largest loss seen
minus the unperturbed loss (so ≥ 0). The model stays in eval mode throughout.

Two recipes (:data:`rws.recipes.rift.RIFT_RECIPES`). rws's own (the default ``MrcSettings()``)
departs from the reference code in three ways: the adversarial set comes from the *training* split
(the reference uses the test split; rws keeps the test split out of every choice), the ascent runs
over fixed-order batches of 128 (the reference shuffles batches of 512; batch size alone roughly
doubles MRC values and can reorder mid-ranked modules), and the PGD examples use rws's PGD step
``2.5·eps/steps`` (the reference: torchattacks PGD with step 2/225). The reference recipe
(``split="test", shuffle=True, batch_size=512, attack_step_size=2/225``) follows the code in all
three; the shuffled order is seeded (the same for every module), the reference's is not. What
remains different: the reference starts the running maximum at a loss of 0, rws at the unperturbed
loss (so rws's MRC is ≥ 0; the reference's can be negative only if no pass raises the loss).

The computation is faster than a deep copy of the model per module and gives identical values
(``benchmarks/bench_rift.py`` checks it): the adversarial set is built once for all modules, the
module's weight is perturbed in place and restored bit for bit, and every other parameter is
frozen, so backward stops at the module instead of running down to the input.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from rws.data.types import ImageDataset, Split
from rws.errors import UsageError
from rws.patching.selection import group_layers, module_of
from rws.robustness.attacks import attack, parse_eps
from rws.runtime.checks import check_float, check_int
from rws.runtime.device import on_device, resolve_device
from rws.runtime.modes import eval_mode
from rws.runtime.progress import progress_bar
from rws.runtime.seed import derived_seed, generator
from rws.training.freeze import grad_only

__all__ = [
    "ModuleCriticality",
    "MrcResult",
    "MrcSettings",
    "adversarial_set",
    "layers_of",
    "module_mrc",
    "mrc",
    "trainable_modules",
]


@dataclass(frozen=True)
class MrcSettings:
    """The MRC recipe: ε, passes, lr and the attack budget are the reference's (REFERENCES.md,
    RiFT); the data split, batch size and batch order are not (see the module doc).

    Attributes:
        eps_ratio: radius of the weight ball relative to ‖W‖ (0.1).
        passes: ascent passes over the adversarial set (10).
        lr: ascent step per batch (1.0).
        attack_eps: L∞ radius of the PGD examples (8/255).
        attack_steps: PGD iterations (10); the step is ``2.5·eps/steps`` unless given.
        attack_step_size: PGD step, or None for the rule above.
        n_examples: examples from the start of the split (None: all).
        batch_size: examples per ascent step and per forward pass.
        seed: seeds the PGD random starts (and the batch order with ``shuffle``).
        split: the dataset split the adversarial set is made from, ``"train"`` (rws) or
            ``"test"`` (the reference); used when :func:`mrc` gets a whole dataset.
        shuffle: a new seeded batch order on every ascent pass (the reference's DataLoader
            shuffles); False: fixed order.
    """

    eps_ratio: float = 0.1
    passes: int = 10
    lr: float = 1.0
    attack_eps: float = 8 / 255
    attack_steps: int = 10
    attack_step_size: float | None = None
    n_examples: int | None = None
    batch_size: int = 128
    seed: int = 0
    split: Literal["train", "test"] = "train"
    shuffle: bool = False

    def __post_init__(self) -> None:
        put = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        put("eps_ratio", check_float("eps_ratio", self.eps_ratio, 0.0))
        put("lr", check_float("lr", self.lr, 0.0))
        put("attack_eps", parse_eps(self.attack_eps))
        check_int("passes", self.passes, 1)
        check_int("attack_steps", self.attack_steps, 1)
        check_int("batch_size", self.batch_size, 1)
        check_int("seed", self.seed, 0)
        if self.n_examples is not None:
            check_int("n_examples", self.n_examples, 1)
        if self.attack_step_size is not None:
            put("attack_step_size", check_float("attack_step_size", self.attack_step_size, 0.0))
        if self.split not in ("train", "test"):
            raise UsageError(f"MRC split must be 'train' or 'test', not {self.split!r}")
        if not isinstance(self.shuffle, bool):
            raise UsageError(f"shuffle must be true or false, got {self.shuffle!r}")


@dataclass(frozen=True)
class ModuleCriticality:
    """One module's MRC.

    Attributes:
        module: the conv/linear module, e.g. ``"layer2.1.conv2"``.
        tensors: the layer's tensors (weight, bias, following norm layer), which RiFT fine-tunes.
        mrc: the largest adversarial-loss increase found inside the ball.
        loss: the adversarial loss there.
        robust_acc: accuracy on the adversarial set there.
        robust_drop: the unperturbed robust accuracy minus ``robust_acc``.
        weight_l2: ‖W‖ (the ball's radius is ``eps_ratio`` times this).
    """

    module: str
    tensors: tuple[str, ...]
    mrc: float
    loss: float
    robust_acc: float
    robust_drop: float
    weight_l2: float


@dataclass
class MrcResult:
    """MRC of every module, in depth order, with the unperturbed loss and accuracy."""

    modules: list[ModuleCriticality]
    base_loss: float
    base_robust_acc: float
    settings: MrcSettings
    n_examples: int
    seconds: float = 0.0
    attack_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def least_critical(self) -> ModuleCriticality:
        """The module with the lowest MRC (the first one on ties): RiFT fine-tunes it."""
        return min(self.modules, key=lambda m: m.mrc)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (wall times included)."""
        return {
            "modules": [{**asdict(m), "tensors": list(m.tensors)} for m in self.modules],
            "least_critical": self.least_critical.module,
            "base_loss": self.base_loss,
            "base_robust_acc": self.base_robust_acc,
            "settings": asdict(self.settings),
            "n_examples": self.n_examples,
            "seconds": self.seconds,
            "attack_seconds": self.attack_seconds,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MrcResult:
        """Inverse of :meth:`to_dict`."""
        mods = [ModuleCriticality(**{**m, "tensors": tuple(m["tensors"])}) for m in d["modules"]]
        return cls(mods, d["base_loss"], d["base_robust_acc"], MrcSettings(**d["settings"]),
                   d["n_examples"], d.get("seconds", 0.0), d.get("attack_seconds", 0.0))  # fmt: skip

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON."""
        return json.dumps(self.to_dict(), indent=2)


def layers_of(model: nn.Module) -> list[tuple[str, tuple[str, ...]]]:
    """``(module, tensors)`` of every conv/linear layer in definition order: the module owning a
    weight of rank ≥ 2, with its bias and the normalisation layer that follows it."""
    state = model.state_dict()
    floats = [n for n, t in state.items() if t.is_floating_point()]
    kinds = dict(model.named_modules())
    out = []
    for layer in group_layers(floats, lambda n: tuple(state[n].shape)):
        weight = f"{layer.name}.weight"
        mod = kinds.get(layer.name)
        if weight in state and state[weight].dim() >= 2 and mod is not None:
            out.append((layer.name, layer.tensors))
    return out


def _as_split(
    data: ImageDataset | Split | tuple[torch.Tensor, torch.Tensor] | str, split: str = "train"
) -> Split:
    if isinstance(data, str):
        from rws.data import load_dataset

        data = load_dataset(data)
    if isinstance(data, ImageDataset):
        return data.test if split == "test" else data.train
    if isinstance(data, Split):
        return data
    x, y = data
    return Split(x, y)


def adversarial_set(
    model: nn.Module, split: Split, settings: MrcSettings, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """PGD examples against ``model`` (eval mode) for the first ``n_examples`` of ``split``."""
    n = len(split) if settings.n_examples is None else min(settings.n_examples, len(split))
    if n == 0:
        raise UsageError("mrc: no examples to build the adversarial set from")
    x, y = split.x[:n].to(device), split.y[:n].to(device)
    x_adv = attack(model, x, y, "pgd", eps=settings.attack_eps, steps=settings.attack_steps,
                   step_size=settings.attack_step_size, generator=generator(settings.seed),
                   batch_size=settings.batch_size)  # fmt: skip
    return x_adv, y


@torch.no_grad()
def _loss_acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int) -> tuple[float, float]:
    loss = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for a in range(0, len(y), bs):
        logits = model(x[a : a + bs])
        loss += F.cross_entropy(logits, y[a : a + bs], reduction="sum").double()
        correct += (logits.argmax(1) == y[a : a + bs]).sum()
    return float(loss) / len(y), int(correct) / len(y)


def module_mrc(
    model: nn.Module,
    weight: nn.Parameter,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: MrcSettings,
    base: tuple[float, float],
) -> tuple[float, float]:
    """Largest loss and the accuracy there, for ascent on ``weight`` inside its ball.

    ``weight`` is restored bit for bit afterwards, even on errors.
    """
    w0 = weight.detach().clone()
    radius = settings.eps_ratio * float(w0.double().norm())
    bs = settings.batch_size
    best_loss, best_acc = base
    order = generator(derived_seed(settings.seed, "mrc-order")) if settings.shuffle else None
    try:
        with grad_only(model, lambda _, p: p is weight):
            for _ in range(settings.passes):
                perm = None if order is None else torch.randperm(len(y), generator=order)
                for a in range(0, len(y), bs):
                    idx = slice(a, a + bs) if perm is None else perm[a : a + bs].to(y.device)
                    loss = F.cross_entropy(model(x[idx]), y[idx])
                    (grad,) = torch.autograd.grad(loss, weight)
                    with torch.no_grad():
                        weight.add_(grad, alpha=settings.lr)
                with torch.no_grad():
                    delta = weight - w0
                    norm = float(delta.double().norm())
                    if norm > radius:
                        weight.copy_(w0 + delta * (radius / norm))
                loss_v, acc = _loss_acc(model, x, y, bs)
                if loss_v > best_loss:
                    best_loss, best_acc = loss_v, acc
    finally:
        with torch.no_grad():
            weight.copy_(w0)
    return best_loss, best_acc


def mrc(
    model: nn.Module,
    data: ImageDataset | Split | tuple[torch.Tensor, torch.Tensor] | str,
    *,
    modules: Sequence[str] | None = None,
    settings: MrcSettings | None = None,
    device: str = "auto",
    progress: bool = False,
) -> MrcResult:
    """Module robust criticality of every conv/linear module of an adversarially trained model.

    Args:
        model: the (adversarially trained) classifier; inputs in [0, 1], normalisation inside.
            Its weights are restored bit for bit; it is left in eval mode.
        data: a dataset (the split ``settings.split`` names is used: training by default, test
            in the reference recipe), a split, ``(x, y)`` or a dataset spec such as ``"digits"``.
        modules: the modules to measure (default: every conv/linear, in definition order).
        settings: the recipe (:class:`MrcSettings`).
        device: ``auto``, ``cpu`` or ``cuda[:n]``.
        progress: a rich progress bar on stderr.

    Returns:
        An :class:`MrcResult`; ``result.least_critical`` is the module RiFT fine-tunes.

    Raises:
        UsageError: an unknown module, bad settings or no examples.

    Example:
        >>> res = rws.mrc(at_model, "digits")  # doctest: +SKIP
        >>> res.least_critical.module  # doctest: +SKIP
        'conv2'
    """
    settings = settings or MrcSettings()
    dev = resolve_device(device)
    layers = layers_of(model)
    if modules is not None:
        known = dict(layers)
        unknown = [m for m in modules if m not in known]
        if unknown:
            raise UsageError(
                f"mrc: no conv/linear module {', '.join(map(repr, unknown))}; the model has "
                f"{', '.join(known)}"
            )
        layers = [(m, known[m]) for m in modules]
    if not layers:
        raise UsageError("mrc: the model has no conv or linear module")
    params = dict(model.named_parameters())
    with on_device(model, dev), eval_mode(model):
        start = time.perf_counter()
        x, y = adversarial_set(model, _as_split(data, settings.split), settings, dev)
        attack_seconds = time.perf_counter() - start
        base = _loss_acc(model, x, y, settings.batch_size)
        out = []
        with progress_bar("module robust criticality", len(layers), enabled=progress) as advance:
            for name, tensors in layers:
                advance(0, description=f"MRC {name}")
                weight = params[f"{name}.weight"]
                loss, acc = module_mrc(model, weight, x, y, settings, base)
                out.append(ModuleCriticality(
                    name, tensors, loss - base[0], loss, acc, base[1] - acc,
                    float(weight.detach().double().norm()),
                ))  # fmt: skip
                advance()
        seconds = time.perf_counter() - start
    return MrcResult(out, base[0], base[1], settings, len(y), seconds, attack_seconds)


def trainable_modules(tensors: Sequence[str]) -> tuple[str, ...]:
    """The modules owning ``tensors`` (e.g. the conv and its BatchNorm), in order."""
    return tuple(dict.fromkeys(module_of(t) for t in tensors))
