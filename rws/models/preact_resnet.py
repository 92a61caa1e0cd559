"""Pre-activation ResNet-18 (He et al. 2016b) for 32×32 inputs, with the RiFT reference's names.

Module names follow ``RiFT/models/preact_resnet.py`` (microsoft/robustlearn): ``conv1``,
``layer1.0.bn1 … layer4.1.conv2``, projection shortcuts ``layerI.0.shortcut.0`` (a bare 1×1 conv),
``linear``. Like that code (and the kuangliu CIFAR code it derives from), there is no BN-ReLU
after the last block unless ``final_bn=True`` (then named ``bn``, as in Rice et al.'s
robust-overfitting code).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rws.models.layers import CIFAR_MEAN, CIFAR_STD, Normalize
from rws.models.registry import register_model


class PreActBlock(nn.Module):
    """BN-ReLU-conv ×2; the shortcut (if any) takes the first activation."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(out)
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + skip


class PreActResNet(nn.Module):
    """Stride-1 3×3 stem, four stages of pre-activation blocks (64/128/256/512), GAP, Linear.

    Args:
        num_blocks: blocks per stage, e.g. ``(2, 2, 2, 2)`` for PreAct ResNet-18.
        num_classes: size of the output layer.
        final_bn: add a BN-ReLU (``bn``) before pooling; the RiFT reference has none.
        mean: per-channel input mean used by the ``normalize`` layer.
        std: per-channel input std used by the ``normalize`` layer.
    """

    def __init__(
        self,
        num_blocks: Sequence[int] = (2, 2, 2, 2),
        num_classes: int = 10,
        *,
        final_bn: bool = False,
        mean: Sequence[float] = CIFAR_MEAN,
        std: Sequence[float] = CIFAR_STD,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        in_planes = 64
        for i, (n, width) in enumerate(zip(num_blocks, (64, 128, 256, 512), strict=True)):
            blocks = []
            for j in range(n):
                blocks.append(PreActBlock(in_planes, width, 2 if (i > 0 and j == 0) else 1))
                in_planes = width
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.bn = nn.BatchNorm2d(in_planes) if final_bn else None
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) in [0, 1] -> (B, classes)
        out = self.conv1(self.normalize(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if self.bn is not None:
            out = F.relu(self.bn(out))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))  # (B, 512, h, w) -> (B, 512)


@register_model(
    "preact-resnet18",
    summary="PreAct ResNet-18 (He et al. 2016b), CIFAR stem",
    url="https://arxiv.org/abs/1603.05027",
)
def preact_resnet18(num_classes: int = 10, **kw: Any) -> nn.Module:
    """PreAct ResNet-18 for 32×32 inputs (11.2 M parameters), RiFT module names."""
    return PreActResNet((2, 2, 2, 2), num_classes, **kw)
