"""Choosing a patch's scale α on validation data: the α curve and the selection rule.

For every α of a grid the patched model ``W + α·δ`` is measured on a validation split
(:class:`rws.recipes.validation.Probe`): clean accuracy, the mean accuracy over the corruptions
(every validation image at every severity: the images ``rws eval`` feeds those cells), and PGD
accuracy (random starts fixed, so every α meets the same attack). The chosen α maximises a weighted
sum of those accuracies (the *criterion*) among the points whose clean accuracy stays within
``max_clean_drop`` points of α = 0's (the unpatched model's) and whose robust accuracy stays within
``max_robust_drop`` points of it (RiFT's rule, made explicit); ties go to the smaller α, the
smaller change. Accuracy curves are not smooth, so the grid is followed by a local refinement:
steps of ``refine`` between the chosen α's grid neighbours, then the rule picks among every point.
α = 0 is always measured and always meets the budgets, so a choice always exists; when no α > 0
meets them, α = 0 is chosen and :attr:`AlphaCurve.budget_met` says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from torch import nn

from rws.data.severity import severity_range
from rws.data.types import Split
from rws.errors import UsageError
from rws.patching.patch import Patch
from rws.recipes.validation import Measurement, Probe
from rws.robustness.attacks import parse_eps
from rws.runtime.checks import check_int
from rws.runtime.modes import eval_mode
from rws.runtime.progress import progress_bar

METRICS = ("clean", "corrupted", "robust")
DEFAULT_GRID = tuple(round(0.1 * i, 1) for i in range(11))
DEFAULT_REFINE = 0.025
_EPS = 1e-9  # accuracies are counts over n; a budget edge within float error counts as met

__all__ = [
    "DEFAULT_GRID",
    "DEFAULT_REFINE",
    "METRICS",
    "AlphaCurve",
    "AlphaPoint",
    "AlphaSettings",
    "alpha_curve",
    "choose_alpha",
    "parse_criterion",
    "refinement",
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


def _check_drop(name: str, value: float | None) -> None:
    ok = value is None or (
        isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
    )
    if not ok or (value is not None and not math.isfinite(value)):
        raise UsageError(f"{name} must be a number of accuracy points ≥ 0, or None; got {value!r}")


@dataclass(frozen=True)
class AlphaSettings:
    """What the α search measures and how it chooses.

    Attributes:
        grid: the α values (0 is always added).
        refine: step of the local refinement around the grid's choice (0: none).
        criterion: metric weights (see :func:`parse_criterion`).
        max_clean_drop: largest allowed fall of clean accuracy below α = 0's, in accuracy points
            (1.0 = one point); None: no budget.
        max_robust_drop: the same for PGD accuracy (0.1 point is RiFT's rule); None: none.
        corruptions, severity: the corrupted validation copies (empty: no corrupted metric).
        copy: ``full`` (every example at every severity of each corruption) or ``cycled`` (each
            example in one (corruption, severity) cell: cheaper over many corruptions).
        attack_eps, attack_steps: PGD (L∞) of the robust metric; ``attack_steps=0`` skips it.
        attack_step_size: the PGD step (None: rws's ``2.5·eps/steps``; RiFT's reference: 2/225).
        attack_runs: PGD runs with independent random starts; the robust metric is the lowest
            accuracy among them (the RiFT paper reports the worst of 3).
        batch_size: images per forward pass and attack chunk.
        seed: seeds the corrupted copies and the PGD random starts.
    """

    grid: tuple[float, ...] = DEFAULT_GRID
    refine: float = DEFAULT_REFINE
    criterion: Mapping[str, float] = field(default_factory=lambda: {"clean": 1.0})
    max_clean_drop: float | None = None
    max_robust_drop: float | None = 0.1
    corruptions: tuple[str, ...] = ()
    severity: tuple[int, int] = (1, 5)
    attack_eps: float = 8 / 255
    attack_steps: int = 10
    batch_size: int = 256
    seed: int = 0
    copy: Literal["full", "cycled"] = "full"
    attack_step_size: float | None = None
    attack_runs: int = 1

    def __post_init__(self) -> None:
        put = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        grid = sorted({0.0, *(float(a) for a in self.grid)})
        if not all(math.isfinite(a) for a in grid):
            raise UsageError(f"alpha grid must hold finite numbers, got {self.grid!r}")
        put("grid", tuple(grid))
        if not (isinstance(self.refine, int | float) and 0 <= self.refine < 1):
            raise UsageError(f"refine must be a step in [0, 1), got {self.refine!r}")
        put("criterion", parse_criterion(self.criterion))
        put("corruptions", tuple(self.corruptions))
        put("severity", severity_range(self.severity))
        put("attack_eps", parse_eps(self.attack_eps))
        check_int("attack_steps", self.attack_steps, 0)
        check_int("attack_runs", self.attack_runs, 1)
        if self.attack_step_size is not None:
            put("attack_step_size", parse_eps(self.attack_step_size))
        check_int("batch_size", self.batch_size, 1)
        _check_drop("max_clean_drop", self.max_clean_drop)
        _check_drop("max_robust_drop", self.max_robust_drop)
        if self.criterion.get("corrupted") and not self.corruptions:
            raise UsageError("criterion uses 'corrupted' but no corruptions are measured")
        if self.criterion.get("robust") and not self.attack_steps:
            raise UsageError("criterion uses 'robust' but the attack is off (attack_steps=0)")

    def probe(self, model: nn.Module, split: Split) -> Probe:
        """The validation probe these settings measure with."""
        return Probe(
            model, split, corruptions=self.corruptions, severity=self.severity,
            attack_eps=self.attack_eps, attack_steps=self.attack_steps,
            batch_size=self.batch_size, seed=self.seed, copy=self.copy,
            attack_step_size=self.attack_step_size, attack_runs=self.attack_runs,
        )  # fmt: skip

    def rule(self) -> dict[str, Any]:
        """The selection rule, JSON-able (a patch's provenance)."""
        return {"criterion": dict(self.criterion), "max_clean_drop": self.max_clean_drop,
                "max_robust_drop": self.max_robust_drop, "units": "accuracy points",
                "grid": list(self.grid), "refine": self.refine, "ties": "smaller α"}  # fmt: skip


@dataclass(frozen=True)
class AlphaPoint:
    """Validation accuracies (fractions) of ``W + α·δ`` (NaN where a metric is not measured)."""

    alpha: float
    clean: float
    corrupted: float
    robust: float

    @classmethod
    def of(cls, alpha: float, m: Measurement) -> AlphaPoint:
        """The point for one measurement."""
        return cls(alpha, m.clean, m.corrupted, m.robust)

    def score(self, criterion: Mapping[str, float]) -> float:
        """The criterion's weighted sum of this point's accuracies."""
        return sum(w * getattr(self, k) for k, w in criterion.items() if w)


def feasible(
    p: AlphaPoint, base: AlphaPoint, max_clean_drop: float | None, max_robust_drop: float | None
) -> bool:
    """Whether ``p`` keeps clean and robust accuracy within the budgets (points) of ``base``; a
    point that could not be measured (NaN clean accuracy) never is."""
    if math.isnan(p.clean):
        return False
    if max_clean_drop is not None and p.clean < base.clean - max_clean_drop / 100 - _EPS:
        return False
    if max_robust_drop is not None and not math.isnan(base.robust):
        return p.robust >= base.robust - max_robust_drop / 100 - _EPS
    return True


@dataclass
class AlphaCurve:
    """The measured points (sorted by α), the chosen one and the rule that chose it."""

    points: list[AlphaPoint]
    chosen: AlphaPoint
    criterion: dict[str, float]
    max_robust_drop: float | None
    n_examples: int
    max_clean_drop: float | None = None

    @property
    def base(self) -> AlphaPoint:
        """The α = 0 point (the unpatched model)."""
        return next(p for p in self.points if p.alpha == 0.0)

    @property
    def budget_met(self) -> bool:
        """Whether some α > 0 met the budgets (else α = 0 was chosen: the patch does nothing)."""
        return any(
            p.alpha != 0.0 and feasible(p, self.base, self.max_clean_drop, self.max_robust_drop)
            for p in self.points
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AlphaCurve:
        """Inverse of :meth:`to_dict` (e.g. a patch's ``provenance["alpha_curve"]``)."""
        points = [AlphaPoint(**p) for p in d["points"]]
        chosen = next(p for p in points if p.alpha == d["chosen"])
        return cls(points, chosen, dict(d["criterion"]), d["max_robust_drop"], d["n_examples"],
                   d.get("max_clean_drop"))  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (a patch's ``provenance["alpha_curve"]``)."""
        return {
            "points": [asdict(p) for p in self.points],
            "chosen": self.chosen.alpha,
            "criterion": dict(self.criterion),
            "max_clean_drop": self.max_clean_drop,
            "max_robust_drop": self.max_robust_drop,
            "units": "accuracy points",
            "n_examples": self.n_examples,
            "budget_met": self.budget_met,
        }


def choose_alpha(
    points: Sequence[AlphaPoint],
    criterion: Mapping[str, float],
    max_robust_drop: float | None,
    max_clean_drop: float | None = None,
) -> AlphaPoint:
    """The best-scoring point within the budgets (accuracy points below α = 0's; None: no budget,
    and no robust budget where robust accuracy was not measured); ties → smaller α."""
    base = next((p for p in points if p.alpha == 0.0), None)
    if base is None:
        raise UsageError("choose_alpha: the points must include α = 0 (the unpatched model)")
    ok = [p for p in points if feasible(p, base, max_clean_drop, max_robust_drop)]
    return max(sorted(ok, key=lambda p: p.alpha), key=lambda p: round(p.score(criterion), 9))


def refinement(grid: Sequence[float], chosen: float, step: float) -> list[float]:
    """α values ``chosen ± k·step`` strictly between ``chosen``'s neighbours on ``grid``."""
    if step <= 0:
        return []
    g = sorted(grid)
    i = g.index(chosen)
    lo = g[i - 1] if i > 0 else chosen
    hi = g[i + 1] if i + 1 < len(g) else chosen
    out = []
    for sign, edge in ((-1, lo), (1, hi)):
        k = 1
        while (a := round(chosen + sign * k * step, 6)) * sign < edge * sign - 1e-9:
            out.append(a)
            k += 1
    return sorted(out)


def search_alpha(
    measure: Callable[[float], AlphaPoint], s: AlphaSettings, n: int, *, progress: bool = False
) -> AlphaCurve:
    """The grid, then the refinement, measured by ``measure(α)``, and the rule's choice."""
    points: dict[float, AlphaPoint] = {}
    rule = (s.criterion, s.max_robust_drop, s.max_clean_drop)
    with progress_bar("alpha search", len(s.grid), enabled=progress) as advance:
        for a in s.grid:
            points[a] = measure(a)
            advance()
    chosen = choose_alpha(list(points.values()), *rule)
    for a in refinement(s.grid, chosen.alpha, s.refine):
        points[a] = measure(a)
    pts = sorted(points.values(), key=lambda p: p.alpha)
    chosen = choose_alpha(pts, *rule)
    return AlphaCurve(pts, chosen, dict(s.criterion), s.max_robust_drop, n, s.max_clean_drop)


def alpha_curve(
    model: nn.Module,
    patch: Patch,
    split: Split,
    settings: AlphaSettings | None = None,
    *,
    probe: Probe | None = None,
    progress: bool = False,
) -> AlphaCurve:
    """Measure ``model`` patched with ``patch`` at every α of the grid (and the refinement) and
    choose one.

    The model is patched in place for each α and restored bit for bit afterwards; it runs in
    eval mode on the device it is on. ``patch.scale`` multiplies every α. ``probe`` reuses
    validation inputs already built for ``model`` (else they are built from ``split``).

    Raises:
        UsageError: an empty or too small split, labels that do not fit the model, bad settings.
    """
    s = settings or AlphaSettings()
    if len(split) == 0:
        raise UsageError("alpha search: the validation split is empty")
    with eval_mode(model):
        pr = probe or s.probe(model, split)
        return search_alpha(lambda a: AlphaPoint.of(a, pr.measure(*([(patch, a)] if a else []))), s, pr.n,
                            progress=progress)  # fmt: skip
