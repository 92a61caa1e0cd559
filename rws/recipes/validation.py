"""The validation data an operating-point search measures on, and the probe that measures it.

Data is a dataset spec (``"digits"``, ``"folder:DIR"`` …: its validation split, never the test
split), an :class:`~rws.data.types.ImageDataset` (its ``val``), a :class:`~rws.data.types.Split`,
an in-memory ``(x, y)`` pair or an iterable of ``(x, y)`` batches such as a ``DataLoader``. The
corrupted copy is built by the same function ``rws eval`` uses
(:func:`rws.robustness.inputs.corrupted_inputs`), so a search and an evaluation with one seed see
the same corrupted images.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from rws.data import load_dataset
from rws.data.types import ImageDataset, Split
from rws.errors import IntegrityError, UsageError
from rws.io.hashing import tensor_sha256
from rws.patching.ops import PatchArg, patched
from rws.robustness.attacks import attack
from rws.robustness.inputs import corrupted_inputs
from rws.runtime.device import model_device
from rws.runtime.seed import derived_seed, generator
from rws.training.metrics import accuracy

MIN_EXAMPLES = 50

logger = logging.getLogger(__name__)

__all__ = ["MIN_EXAMPLES", "Measurement", "Probe", "validation_split"]


def validation_split(data: Any, *, min_examples: int = MIN_EXAMPLES) -> Split:
    """The validation examples ``data`` names (see the module doc).

    Raises:
        UsageError: no data, an unknown form, mismatched lengths, or fewer than ``min_examples``.
    """
    if data is None:
        raise UsageError("an operating-point search needs validation data (--data / data=…)")
    if isinstance(data, str):
        split = load_dataset(data).val
    elif isinstance(data, ImageDataset):
        split = data.val
    elif isinstance(data, Split):
        split = data
    elif isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        split = _pair(torch.as_tensor(data[0]), torch.as_tensor(data[1]))
    elif isinstance(data, Iterable) and not isinstance(data, torch.Tensor | bytes):
        batches = [_batch(b) for b in data]
        if not batches:
            raise UsageError("validation data: the data loader yielded no batch")
        split = _pair(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
    else:
        raise UsageError(
            f"validation data: expected a dataset spec such as 'digits', an (x, y) pair or a "
            f"DataLoader, got {type(data).__name__}"
        )
    if len(split) < min_examples:
        raise UsageError(
            f"validation data: {len(split)} examples are too few to choose an operating point "
            f"(at least {min_examples}); give a larger validation split"
        )
    return split


def _batch(b: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(b, Sequence) and len(b) >= 2:
        return torch.as_tensor(b[0]), torch.as_tensor(b[1])
    raise UsageError("validation data: each batch must be an (images, labels) pair")


def _pair(x: torch.Tensor, y: torch.Tensor) -> Split:
    if x.ndim != 4 or not x.is_floating_point():
        raise UsageError(f"validation images: expected float (N, C, H, W), got {tuple(x.shape)}")
    if y.ndim != 1 or y.shape[0] != x.shape[0] or y.is_floating_point():
        raise UsageError(
            f"validation labels: expected {x.shape[0]} integer labels, got shape {tuple(y.shape)}"
        )
    return Split(x.detach().float().cpu(), y.detach().long().cpu())


def fingerprint(split: Split) -> str:
    """sha256 of the validation images and labels (what a patch's provenance records)."""
    return tensor_sha256(torch.cat([split.x.flatten(), split.y.float()]))


@dataclass(frozen=True)
class Measurement:
    """Validation accuracies (fractions) of one patched model; NaN where not measured."""

    clean: float
    corrupted: float
    robust: float
    per_corruption: tuple[float, ...] = ()


class Probe:
    """A model and its validation inputs on the model's device, measured under patches.

    The corrupted inputs are built once, the images ``rws eval`` feeds each (corruption, severity)
    cell with the same seed and batch size: ``copy="full"`` puts every example in every severity of
    each corruption (the corrupted metric is the mean over corruptions); ``"cycled"`` puts example
    ``j`` in the ``j``-th cell only (one image per example: cheaper over many corruptions). The PGD
    random starts are fixed, so every patched model meets the same attack; with ``attack_runs``
    > 1 the robust accuracy is the lowest of that many runs (run 0 is the single run's start).
    """

    def __init__(
        self,
        model: nn.Module,
        split: Split,
        *,
        corruptions: Sequence[str] = (),
        severity: tuple[int, int] = (1, 5),
        attack_eps: float = 8 / 255,
        attack_steps: int = 0,
        batch_size: int = 256,
        seed: int = 0,
        copy: Literal["full", "cycled"] = "full",
        attack_step_size: float | None = None,
        attack_runs: int = 1,
    ) -> None:
        if copy not in ("full", "cycled"):
            raise UsageError(f"corrupted copy must be 'full' or 'cycled', got {copy!r}")
        self.model, self.batch_size, self.seed = model, batch_size, seed
        self.attack_eps, self.attack_steps = attack_eps, attack_steps
        self.attack_step_size, self.attack_runs = attack_step_size, attack_runs
        self.device = model_device(model)
        self.n = len(split)
        self.fingerprint = fingerprint(split)
        self._check_labels(split)
        self.x, self.y = split.x.to(self.device), split.y.to(self.device)
        lo, hi = severity
        if copy == "full":  # every example at every severity: (S·N, 3, H, W) per corruption
            self.y_corrupted = split.y.repeat(hi - lo + 1).to(self.device)
            self.corrupted = [self._full(split.x, c, lo, hi) for c in corruptions]
        else:  # one copy, example j in the j-th (corruption, severity) cell in turn: N images
            self.y_corrupted = self.y
            self.corrupted = []
            if corruptions:
                xc = corrupted_inputs(split.x, corruptions, severity, seed=seed,
                                      batch_size=batch_size)  # fmt: skip
                self.corrupted.append(xc.to(self.device))

    def _full(self, x: torch.Tensor, corruption: str, lo: int, hi: int) -> torch.Tensor:
        cells = [corrupted_inputs(x, [corruption], s, seed=self.seed, batch_size=self.batch_size)
                 for s in range(lo, hi + 1)]  # fmt: skip
        return torch.cat(cells).to(self.device)

    def _check_labels(self, split: Split) -> None:
        with torch.no_grad():
            was = self.model.training
            self.model.eval()
            out = self.model(split.x[:2].to(self.device))
            self.model.train(was)
        classes = out.shape[-1]
        lo, hi = int(split.y.min()), int(split.y.max())
        if lo < 0 or hi >= classes:
            raise UsageError(
                f"validation labels run {lo}…{hi} but the model has {classes} outputs: "
                "the data does not fit the model"
            )

    def measure(self, *patches: PatchArg) -> Measurement:
        """Accuracies of the model with ``patches`` applied (restored bit for bit after); no
        patch: the model itself (α = 0 of a search is always the unpatched model, also for a patch
        whose fixed tensors apply whatever α). Patches that cannot be applied together (a running
        variance pushed to ≤ 0, e.g. BN replacements summed with coefficients over 1) give an
        all-NaN measurement, which no search rule accepts."""
        try:
            return self._measure(*patches)
        except IntegrityError as exc:
            logger.info("not measurable: %s", exc)
            n = len(self.corrupted)
            return Measurement(math.nan, math.nan, math.nan, (math.nan,) * n)

    def _measure(self, *patches: PatchArg) -> Measurement:
        m, dev, bs = self.model, self.device, self.batch_size
        with patched(m, *patches):
            clean = accuracy(m, self.x, self.y, bs, dev)
            per = tuple(accuracy(m, xc, self.y_corrupted, bs, dev) for xc in self.corrupted)
            robust = math.nan
            for run in range(self.attack_runs if self.attack_steps else 0):
                seed = self.seed if run == 0 else derived_seed(self.seed, "pgd-run", run)
                xa = attack(m, self.x, self.y, "pgd", eps=self.attack_eps, steps=self.attack_steps,
                            step_size=self.attack_step_size, generator=generator(seed),
                            batch_size=bs)  # fmt: skip
                acc = accuracy(m, xa, self.y, bs, dev)
                robust = acc if run == 0 else min(robust, acc)
        corrupted = sum(per) / len(per) if per else math.nan
        return Measurement(clean, corrupted, robust, per)
