"""scikit-learn's 8×8 digits, upsampled to 32×32 RGB in [0, 1]: the built-in data (no download)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from rws.data.types import ImageDataset, Split


def load_digits(
    size: int = 32, *, val_fraction: float = 0.15, test_fraction: float = 0.25
) -> ImageDataset:
    """The 1,797 digits, bilinearly upsampled to ``size``², grey replicated to 3 channels.

    The split is fixed (stratified, seed 0): the same images land in the same split on every
    machine.
    """
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    raw = _sk_load_digits()
    x = torch.from_numpy(raw.images.astype(np.float32) / 16.0)  # (N, 8, 8) in [0, 1]
    x = F.interpolate(x[:, None], size=(size, size), mode="bilinear", align_corners=False)
    x = x.clamp_(0.0, 1.0).expand(-1, 3, -1, -1).contiguous()  # (N, 3, size, size)
    y = torch.from_numpy(raw.target.astype(np.int64))
    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=test_fraction, stratify=raw.target, random_state=0)
    val_share = val_fraction / (1.0 - test_fraction)
    train, val = train_test_split(
        rest, test_size=val_share, stratify=raw.target[rest], random_state=0
    )

    def split(i: np.ndarray) -> Split:
        t = torch.from_numpy(np.sort(i))
        return Split(x[t], y[t])

    classes = tuple(str(d) for d in range(10))
    return ImageDataset(
        "digits", split(train), split(val), split(test), num_classes=10, classes=classes
    )
