"""Per-example attack losses on logits ``(N, C)``: CE, DLR, targeted DLR and the probability margin.

Each returns a ``(N,)`` tensor that the attacks maximise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_TINY = 1e-12


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the true class."""
    return F.cross_entropy(logits, y, reduction="none")


def _max_other(scores: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest score among classes ≠ y, and its class."""
    masked = scores.scatter(1, y[:, None], float("-inf"))
    value, index = masked.max(dim=1)
    return value, index


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of Logits Ratio (Croce & Hein 2020): ``-(z_y - max_{i≠y} z_i) / (z_π1 - z_π3)``.

    Invariant to shifting and rescaling the logits; needs at least 3 classes.
    """
    top = logits.sort(dim=1, descending=True).values  # (N, C), π1 ≥ π2 ≥ …
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_other, _ = _max_other(logits, y)
    return -(z_y - z_other) / (top[:, 0] - top[:, 2] + _TINY)


def dlr_targeted_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR: ``-(z_y - z_t) / (z_π1 - (z_π3 + z_π4) / 2)``; needs at least 4 classes."""
    top = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + _TINY)


def probability_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PMA's loss ``p_max - p_y`` on softmax probabilities (``p_max`` over classes ≠ y).

    Positive exactly when the example is misclassified. Its input gradient equals
    ``p_y·∇CE(y) + p_max·∇(−CE(t))`` with ``t`` the runner-up class (Xie et al. 2024).
    """
    p = logits.softmax(dim=1)
    p_y = p.gather(1, y[:, None]).squeeze(1)
    p_max, _ = _max_other(p, y)
    return p_max - p_y


def neg_true_probability(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``-p_y``: PMA's early-phase loss in its first round."""
    return -logits.softmax(dim=1).gather(1, y[:, None]).squeeze(1)


def max_other_probability(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``p_max`` over classes ≠ y: PMA's early-phase loss in its second round."""
    p_max, _ = _max_other(logits.softmax(dim=1), y)
    return p_max
