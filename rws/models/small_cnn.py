"""A small 3-conv CNN for 32×32 inputs: trains on the digits data in seconds on a CPU."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rws.models.layers import CIFAR_MEAN, CIFAR_STD, Normalize
from rws.models.registry import register_model


class SmallCNN(nn.Module):
    """conv-BN-ReLU ×3 (the last two followed by 2×2 max-pool), global average pool, linear."""

    def __init__(
        self,
        num_classes: int = 10,
        width: int = 16,
        mean: Sequence[float] = CIFAR_MEAN,
        std: Sequence[float] = CIFAR_STD,
    ) -> None:
        super().__init__()
        w = width
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(3, w, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.conv2 = nn.Conv2d(w, 2 * w, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * w)
        self.conv3 = nn.Conv2d(2 * w, 4 * w, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * w)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, 3, 32, 32) in [0, 1] -> (B, num_classes) logits
        x = self.normalize(x)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.pool(self.relu(self.bn2(self.conv2(x))))
        x = self.pool(self.relu(self.bn3(self.conv3(x))))
        return self.fc(self.gap(x).flatten(1))


@register_model("small-cnn", summary="3-conv BN CNN for 32×32 inputs (tests, demo)")
def small_cnn(num_classes: int = 10, width: int = 16) -> nn.Module:
    """The small CNN with ``width`` channels in its first conv (doubling twice)."""
    return SmallCNN(num_classes=num_classes, width=width)
