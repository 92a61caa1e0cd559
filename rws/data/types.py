"""The containers every data source returns, and the uint8 → float conversion they share."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

_CHUNK = 4096  # images converted at a time, to bound the temporary float copies


@dataclass(frozen=True)
class Split:
    """Images ``(N, 3, H, W)`` float32 in [0, 1] and labels ``(N,)`` int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class ImageDataset:
    """A dataset with fixed train / validation / test splits.

    Attributes:
        name: the source, e.g. ``"digits"`` or ``"cifar10:/data/cifar-10-batches-py"``.
        train: training split.
        val: validation split (fixed, carved from the training data where the source has none).
        test: test split.
        num_classes: number of classes; labels are ``0 … num_classes - 1``.
        classes: class names in label order, where the source has them (else empty).
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    classes: tuple[str, ...] = ()


def images_to_tensor(images: np.ndarray, size: int | None = None) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` images (array or memory map) → float32 ``(N, 3, S, S)`` in [0, 1].

    Args:
        images: RGB images, channels last.
        size: output side ``S``; ``None`` keeps ``H × W``. Resizing is bilinear (antialiased).

    Returns:
        A new contiguous tensor.
    """
    n, h, w, _ = images.shape
    out_h, out_w = (h, w) if size is None else (size, size)
    out = torch.empty((n, 3, out_h, out_w), dtype=torch.float32)
    for start in range(0, n, _CHUNK):
        chunk = torch.from_numpy(np.array(images[start : start + _CHUNK]))  # a copy
        x = chunk.permute(0, 3, 1, 2).float().div_(255.0)  # (B, H, W, 3) -> (B, 3, H, W)
        if (out_h, out_w) != (h, w):
            x = F.interpolate(
                x, size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=True
            ).clamp_(0.0, 1.0)
        out[start : start + len(chunk)] = x
    return out


def stratified_holdout(
    labels: np.ndarray, fraction: float, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (kept, held out), holding out ``round(fraction · n_c)`` of every class c.

    A class with at least two members keeps at least one and, where ``fraction > 0``, holds out at
    least one, so small datasets still get a validation example of every class (``0.5`` rounds up).

    The choice depends only on ``labels``, ``fraction`` and ``seed``, so a split is the same on
    every machine. Both index arrays are sorted (the source's order is kept within each split).
    """
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n = len(idx)
        k = min(n - 1, max(1, math.floor(fraction * n + 0.5))) if fraction > 0 and n > 1 else 0
        held.append(rng.permutation(idx)[:k])
    held_idx = np.sort(np.concatenate(held)) if held else np.empty(0, dtype=np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[held_idx] = False
    return np.flatnonzero(mask), held_idx
