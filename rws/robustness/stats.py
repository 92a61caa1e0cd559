"""Paired statistics of per-example correctness: which test each report row gets, and why.

A *single cell* (clean, one corruption × severity, one attack) holds one correctness bit per image
for each model, so the images are independent pairs: :func:`compare` runs the exact McNemar test
on the discordant pairs and gives Newcombe's paired Wilson interval for the accuracy change.

A *pooled row* (a corruption's mean over severities, the mean over all corruptions) holds several
cells per image; those cells are not independent (an image the model finds hard is hard at every
severity), so pooling them into one McNemar table overstates the evidence by up to the number of
cells. :func:`compare_pooled` tests at the image level instead: each image's mean correctness over
the pooled cells, variant minus base, paired; the Wilcoxon signed-rank test on those differences
(:func:`wilcoxon_p`) and a paired bootstrap over images for the 95 % interval
(:func:`bootstrap_ci`). :func:`add_holm` then adjusts the p-values of all the rows one variant is
tested on (its family) by Holm's step-down method.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from rws.errors import UsageError

Z95 = 1.959963984540054  # the standard normal's 0.975 quantile: two-sided 95 %
BOOTSTRAP_RESAMPLES = 10_000


def mcnemar_p(gained: int, lost: int) -> float:
    """Exact two-sided McNemar p-value: a binomial test of ``gained`` vs ``lost`` discordant pairs.

    Example:
        >>> round(mcnemar_p(8, 2), 6)  # 2·P(X ≤ 2), X ~ Bin(10, 1/2) = 112/1024
        0.109375
    """
    n = gained + lost
    if n == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(min(gained, lost), n, 0.5).pvalue)


def accuracy(correct: torch.Tensor) -> float:
    """Share of ``True`` in a bool tensor, computed exactly from counts (NaN when empty)."""
    return int(correct.sum()) / correct.numel() if correct.numel() else float("nan")


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion ``k / n`` (``(0, 1)`` when ``n`` is 0).

    Example:
        >>> [round(x, 4) for x in wilson_interval(8, 10)]
        [0.4902, 0.9433]
    """
    if n == 0:
        return 0.0, 1.0
    p, z2 = k / n, z * z
    centre = (k + z2 / 2) / (n + z2)
    half = z * math.sqrt(n * p * (1 - p) + z2 / 4) / (n + z2)
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_ci(
    both: int, gained: int, lost: int, neither: int, z: float = Z95
) -> tuple[float, float]:
    """Newcombe's square-and-add interval for a paired accuracy change (variant − base).

    The 2 × 2 table of one cell: ``both`` right, ``gained`` (only the variant right), ``lost``
    (only the base right), ``neither``. Wilson intervals of the two accuracies are combined with
    their correlation, continuity-corrected as in Newcombe (1998), Statistics in Medicine 17,
    2635–2650 (the interval Altman's *Statistics with Confidence* and Fagerland et al.'s
    *Statistical Analysis of Contingency Tables* §8 give).

    Example:
        >>> [round(x, 4) for x in newcombe_ci(59, 6, 16, 80)]  # Fagerland et al.'s Cavo example
        [-0.1186, -0.0046]
    """
    n = both + gained + lost + neither
    if n == 0:
        return -1.0, 1.0
    p1, p2 = (both + gained) / n, (both + lost) / n  # variant, base
    l1, u1 = wilson_interval(both + gained, n, z)
    l2, u2 = wilson_interval(both + lost, n, z)
    margins = (both + gained) * (lost + neither) * (both + lost) * (gained + neither)
    phi = 0.0
    if margins > 0:
        a = both * neither - gained * lost
        phi = (a - n / 2) / math.sqrt(margins) if a > n / 2 else min(a, 0) / math.sqrt(margins)
    d = p1 - p2
    lo = d - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    hi = d + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return max(-1.0, lo), min(1.0, hi)


def wilcoxon_p(diff: np.ndarray | Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences; 1.0 when all are zero.

    Zero differences (images both models score alike) are dropped before ranking, scipy's
    ``zero_method="wilcox"``: they carry no sign, and dropping them conditions on the images that
    changed, as McNemar conditions on the discordant pairs. With one cell per image the test is
    then McNemar's normal form, ``z = (gained − lost) / √(gained + lost)``. scipy chooses the
    null distribution (``method="auto"``; in scipy 1.17: exact for ≤ 50 differences without ties,
    exact sign-flip enumeration for ≤ 13 with ties, else the normal approximation with the tie
    correction, which is what evaluations of hundreds of images get); no continuity correction.

    Example:
        >>> round(wilcoxon_p([3, -1, 2, 0, 5, 4, 6, 0]), 6)  # six non-zero, no ties: exact
        0.0625
    """
    d = np.asarray(diff, dtype=np.float64)
    d = d[d != 0]
    if d.size == 0:
        return 1.0
    from scipy.stats import wilcoxon

    return float(wilcoxon(d, zero_method="wilcox", correction=False, method="auto").pvalue)


def bootstrap_ci(
    diff: np.ndarray | Sequence[float],
    *,
    seed: int = 0,
    resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval for the mean of paired differences, resampling the pairs.

    Differences repeat (an image's mean correctness over k cells is a multiple of 1/k), so each
    resample is drawn as a multinomial over the distinct values with their observed frequencies:
    the same distribution as resampling the n pairs with replacement, in O(distinct values) per
    resample. ``seed`` fixes the draws (numpy's PCG64), so the interval is deterministic.

    Example:
        >>> d = [1.0] * 30 + [0.0] * 60 + [-1.0] * 10  # mean 0.2
        >>> lo, hi = bootstrap_ci(d, seed=0)
        >>> bool(lo < 0.2 < hi), round(hi - lo, 1)
        (True, 0.2)
    """
    d = np.asarray(diff, dtype=np.float64)
    if d.size == 0:
        return float("nan"), float("nan")
    values, counts = np.unique(d, return_counts=True)
    rng = np.random.Generator(np.random.PCG64(seed))
    draws = rng.multinomial(d.size, counts / d.size, size=resamples)  # (resamples, distinct)
    means = draws @ values / d.size
    tail = (1 - level) / 2
    lo, hi = np.quantile(means, [tail, 1 - tail])
    return float(lo), float(hi)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control under any dependence).

    Sorted ascending, the i-th smallest of m becomes ``max_{j ≤ i} min(1, (m − j + 1)·p_(j))``;
    the result keeps the input order.

    Example:
        >>> [round(p, 6) for p in holm([0.01, 0.04, 0.03])]
        [0.03, 0.06, 0.06]
    """
    m = len(p_values)
    out = [1.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda j: p_values[j])):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out


def add_holm(family: Sequence[dict[str, Any]]) -> None:
    """Set ``p_holm`` on each test result of one family (in place) from their ``p_value``."""
    for row, p in zip(family, holm([r["p_value"] for r in family]), strict=True):
        row["p_holm"] = p


def compare(base: torch.Tensor, other: torch.Tensor) -> dict[str, Any]:
    """Paired comparison of one cell's per-example correctness (bool, shape ``(n,)``).

    Returns ``{"test": "mcnemar", "delta", "p_value", "ci95": [lo, hi], "gained", "lost", "n"}``:
    ``delta`` the accuracy change, ``p_value`` the exact McNemar test, ``ci95`` Newcombe's
    interval (:func:`newcombe_ci`).

    Example:
        >>> t = lambda *v: torch.tensor(v, dtype=torch.bool)
        >>> compare(t(1, 0, 0), t(1, 1, 1))["gained"]
        2
    """
    gained, lost = int((~base & other).sum()), int((base & ~other).sum())
    both = int((base & other).sum())
    n = base.numel()
    lo, hi = newcombe_ci(both, gained, lost, n - both - gained - lost)
    return {"test": "mcnemar", "delta": (gained - lost) / max(1, n),
            "p_value": mcnemar_p(gained, lost), "ci95": [lo, hi], "gained": gained,
            "lost": lost, "n": n}  # fmt: skip


def compare_pooled(base: torch.Tensor, other: torch.Tensor, *, seed: int = 0) -> dict[str, Any]:
    """Image-level comparison of a pooled row: correctness of shape ``(n_images, n_cells)``.

    Each image's mean correctness over the cells, variant minus base, is one paired difference;
    ``delta`` is their mean (the change of the row's mean accuracy), ``p_value`` the Wilcoxon
    signed-rank test (:func:`wilcoxon_p`) and ``ci95`` the paired bootstrap over images
    (:func:`bootstrap_ci`, seeded by ``seed``). ``gained``/``lost`` count the (image, cell) pairs
    where only the variant / only the base is right; ``images_up``/``images_down`` the images
    whose mean correctness rose / fell. One cell per image is a single cell: :func:`compare`.

    Returns:
        ``{"test": "wilcoxon", "delta", "p_value", "ci95": [lo, hi], "gained", "lost", "n",
        "images_up", "images_down"}`` (``n``: images).

    Example:
        >>> b = torch.tensor([[1, 1], [0, 0], [1, 0]], dtype=torch.bool)
        >>> v = torch.tensor([[1, 1], [1, 1], [1, 1]], dtype=torch.bool)
        >>> r = compare_pooled(b, v)
        >>> r["test"], r["delta"], r["images_up"], r["gained"]
        ('wilcoxon', 0.5, 2, 3)
    """
    if base.shape != other.shape or base.dim() != 2:
        raise UsageError(f"need two (images, cells) tensors of one shape, got "
                         f"{tuple(base.shape)} and {tuple(other.shape)}")  # fmt: skip
    if base.shape[1] == 1:
        return compare(base[:, 0], other[:, 0])
    n, k = base.shape
    # per image: (variant right − base right) summed over cells, an exact integer; / k is the mean
    diff = (other.sum(1, dtype=torch.int64) - base.sum(1, dtype=torch.int64)).numpy()
    lo, hi = bootstrap_ci(diff / k, seed=seed)
    return {"test": "wilcoxon", "delta": float(diff.sum()) / max(1, n * k),
            "p_value": wilcoxon_p(diff), "ci95": [lo, hi],
            "gained": int((~base & other).sum()), "lost": int((base & ~other).sum()), "n": n,
            "images_up": int((diff > 0).sum()), "images_down": int((diff < 0).sum())}  # fmt: skip
