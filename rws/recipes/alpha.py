"""Choosing a patch's scale α on validation data: the α curve and the selection rule.

For every α of a grid the patched model ``W + α·δ`` is measured on a validation split: clean
accuracy, accuracy on a fixed corrupted copy (every corruption × severity in turn), and PGD
accuracy (random starts fixed, so every α meets the same attack). The chosen α maximises a
weighted sum of those accuracies (the *criterion*) among the points whose robust accuracy stays
within ``max_robust_drop`` of α = 0's, the unpatched model's (RiFT's rule, made explicit); ties go to
the smaller α, the smaller change. α = 0 is always measured, so a choice always exists.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from rws.data.severity import severity_range
from rws.data.types import Split
from rws.errors import UsageError
from rws.patching.ops import patched
from rws.patching.patch import Patch
from rws.robustness.attacks import attack, parse_eps
from rws.robustness.inputs import corrupted_inputs
from rws.runtime.checks import check_int
from rws.runtime.device import model_device
from rws.runtime.modes import eval_mode
from rws.runtime.progress import progress_bar
from rws.runtime.seed import generator
from rws.training.metrics import accuracy

METRICS = ("clean", "corrupted", "robust")
DEFAULT_GRID = tuple(round(0.1 * i, 1) for i in range(11))

__all__ = [
    "DEFAULT_GRID",
    "METRICS",
    "AlphaCurve",
    "AlphaPoint",
    "AlphaSettings",
    "alpha_curve",
    "choose_alpha",
    "parse_criterion",
]


def parse_criterion(spec: str | Mapping[str, float]) -> dict[str, float]:
    """``"clean"`` → ``{"clean": 1}``; ``"clean+corrupted"`` → both at 1;
    ``"clean=1,corrupted=0.5"`` → weighted. Metrics: clean, corrupted, robust.

    Raises:
        UsageError: an unknown metric, a bad weight, or no positive weight.
    """
    if isinstance(spec, Mapping):
        items = [(str(k), v) for k, v in spec.items()]
    else:
        items = []
        for part in spec.replace("+", ",").split(","):
            key, sep, value = part.strip().partition("=")
            try:
                items.append((key.strip(), float(value) if sep else 1.0))
            except ValueError:
                raise UsageError(f"criterion {spec!r}: {value!r} is not a number") from None
    out: dict[str, float] = {}
    for key, w in items:
        if key not in METRICS:
            raise UsageError(
                f"criterion {spec!r}: unknown metric {key!r}; use {', '.join(METRICS)} or a "
                "weighted sum such as clean=1,corrupted=0.5"
            )
        if not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
            raise UsageError(f"criterion {spec!r}: weight of {key} must be a number ≥ 0")
        out[key] = out.get(key, 0.0) + float(w)
    if not any(w > 0 for w in out.values()):
        raise UsageError(f"criterion {spec!r}: give at least one metric a positive weight")
    return out


@dataclass(frozen=True)
class AlphaSettings:
    """What the α search measures and how it chooses.

    Attributes:
        grid: the α values (0 is always added).
        criterion: metric weights (see :func:`parse_criterion`).
        max_robust_drop: largest allowed fall of robust accuracy below α = 0's, as a fraction
            (0.001 = 0.1 point, the paper's rule); None: no constraint.
        corruptions, severity: the corrupted validation copy (empty: no corrupted metric).
        attack_eps, attack_steps: PGD (L∞) of the robust metric; ``attack_steps=0`` skips it.
        batch_size: images per forward pass and attack chunk.
        seed: seeds the corrupted copy and the PGD random starts.
    """

    grid: tuple[float, ...] = DEFAULT_GRID
    criterion: Mapping[str, float] = field(default_factory=lambda: {"clean": 1.0})
    max_robust_drop: float | None = 0.001
    corruptions: tuple[str, ...] = ()
    severity: tuple[int, int] = (1, 5)
    attack_eps: float = 8 / 255
    attack_steps: int = 10
    batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        put = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        grid = sorted({0.0, *(float(a) for a in self.grid)})
        if not all(math.isfinite(a) for a in grid):
            raise UsageError(f"alpha grid must hold finite numbers, got {self.grid!r}")
        put("grid", tuple(grid))
        put("criterion", parse_criterion(self.criterion))
        put("corruptions", tuple(self.corruptions))
        put("severity", severity_range(self.severity))
        put("attack_eps", parse_eps(self.attack_eps))
        check_int("attack_steps", self.attack_steps, 0)
        check_int("batch_size", self.batch_size, 1)
        if self.max_robust_drop is not None and not self.max_robust_drop >= 0:
            raise UsageError(f"max_robust_drop must be ≥ 0 or None, got {self.max_robust_drop!r}")
        if self.criterion.get("corrupted") and not self.corruptions:
            raise UsageError("criterion uses 'corrupted' but no corruptions are measured")
        if self.criterion.get("robust") and not self.attack_steps:
            raise UsageError("criterion uses 'robust' but the attack is off (attack_steps=0)")


@dataclass(frozen=True)
class AlphaPoint:
    """Validation accuracies of ``W + α·δ`` (NaN where a metric is not measured)."""

    alpha: float
    clean: float
    corrupted: float
    robust: float

    def score(self, criterion: Mapping[str, float]) -> float:
        """The criterion's weighted sum of this point's accuracies."""
        return sum(w * getattr(self, k) for k, w in criterion.items() if w)


@dataclass
class AlphaCurve:
    """The measured points, the chosen one and the rule that chose it."""

    points: list[AlphaPoint]
    chosen: AlphaPoint
    criterion: dict[str, float]
    max_robust_drop: float | None
    n_examples: int

    @property
    def base(self) -> AlphaPoint:
        """The α = 0 point (the unpatched model)."""
        return next(p for p in self.points if p.alpha == 0.0)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AlphaCurve:
        """Inverse of :meth:`to_dict` (e.g. a patch's ``provenance["alpha_curve"]``)."""
        points = [AlphaPoint(**p) for p in d["points"]]
        chosen = next(p for p in points if p.alpha == d["chosen"])
        return cls(points, chosen, dict(d["criterion"]), d["max_robust_drop"], d["n_examples"])

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (a patch's ``provenance["alpha_curve"]``)."""
        return {
            "points": [asdict(p) for p in self.points],
            "chosen": self.chosen.alpha,
            "criterion": dict(self.criterion),
            "max_robust_drop": self.max_robust_drop,
            "n_examples": self.n_examples,
        }


def choose_alpha(
    points: Sequence[AlphaPoint], criterion: Mapping[str, float], max_robust_drop: float | None
) -> AlphaPoint:
    """The best-scoring point whose robust accuracy is within ``max_robust_drop`` of α = 0's
    (every point when the drop is None or robust accuracy was not measured); ties → smaller α."""
    base = next((p for p in points if p.alpha == 0.0), None)
    if base is None:
        raise UsageError("choose_alpha: the points must include α = 0 (the unpatched model)")
    ok = list(points)
    if max_robust_drop is not None and not math.isnan(base.robust):
        ok = [p for p in points if p.robust >= base.robust - max_robust_drop - 1e-12]
    return max(sorted(ok, key=lambda p: p.alpha), key=lambda p: p.score(criterion))


def alpha_curve(
    model: nn.Module,
    patch: Patch,
    split: Split,
    settings: AlphaSettings | None = None,
    *,
    progress: bool = False,
) -> AlphaCurve:
    """Measure ``model`` patched with ``patch`` at every α of the grid and choose one.

    The model is patched in place for each α and restored bit for bit afterwards; it runs in
    eval mode on the device it is on. ``patch.scale`` multiplies every α.

    Raises:
        UsageError: an empty split or bad settings.
    """
    s = settings or AlphaSettings()
    if len(split) == 0:
        raise UsageError("alpha search: the validation split is empty")
    dev = model_device(model)
    x, y = split.x.to(dev), split.y.to(dev)
    xc = None
    if s.corruptions:  # the images `rws eval` with this seed and batch size would feed
        xc = corrupted_inputs(
            split.x, s.corruptions, s.severity, seed=s.seed, batch_size=s.batch_size
        ).to(dev)
    points = []
    with eval_mode(model), progress_bar("alpha search", len(s.grid), enabled=progress) as advance:
        for a in s.grid:
            with patched(model, patch, scale=a):
                clean = accuracy(model, x, y, s.batch_size, dev)
                corr = accuracy(model, xc, y, s.batch_size, dev) if xc is not None else math.nan
                robust = math.nan
                if s.attack_steps:
                    xa = attack(model, x, y, "pgd", eps=s.attack_eps, steps=s.attack_steps,
                                generator=generator(s.seed), batch_size=s.batch_size)  # fmt: skip
                    robust = accuracy(model, xa, y, s.batch_size, dev)
            points.append(AlphaPoint(a, clean, corr, robust))
            advance()
    chosen = choose_alpha(points, s.criterion, s.max_robust_drop)
    return AlphaCurve(points, chosen, dict(s.criterion), s.max_robust_drop, len(y))
