"""Paired statistics of per-example correctness: accuracy from counts and the exact McNemar test."""

from __future__ import annotations

from typing import Any

import torch


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


def compare(base: torch.Tensor, other: torch.Tensor) -> dict[str, Any]:
    """``{"delta", "p_value", "gained", "lost"}`` of paired per-example correctness.

    Example:
        >>> t = lambda *v: torch.tensor(v, dtype=torch.bool)
        >>> compare(t(1, 0, 0), t(1, 1, 1))["gained"]
        2
    """
    gained, lost = int((~base & other).sum()), int((base & ~other).sum())
    return {"delta": (gained - lost) / max(1, base.numel()), "p_value": mcnemar_p(gained, lost),
            "gained": gained, "lost": lost}  # fmt: skip
