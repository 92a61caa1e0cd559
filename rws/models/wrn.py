"""Wide ResNets (Zagoruyko & Komodakis 2016) with the module names of the TRADES / RiFT code.

Names follow ``RiFT/models/wide_resnet.py`` (microsoft/robustlearn), itself the TRADES layout:
``conv1``, ``block1.layer.0.bn1 … block3.layer.4.conv2``, ``…convShortcut`` where a group changes
width, final ``bn1`` and ``fc``. That code also builds an unused ``sub_block1`` (never called in
``forward``, absent here): drop its ``sub_block1.*`` entries when loading such a checkpoint.
WRN-34-10 has 46.2 M parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rws.errors import UsageError
from rws.models.layers import CIFAR_MEAN, CIFAR_STD, Normalize
from rws.models.registry import register_model


class WideBasic(nn.Module):
    """BN-ReLU-conv ×2 with optional dropout between; a 1×1 ``convShortcut`` when widths differ.

    As in the TRADES code, a block that changes width applies its shortcut to the activated input.
    """

    def __init__(self, in_planes: int, planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.convShortcut: nn.Module | None = None
        if in_planes != planes:
            self.convShortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(act)))
        out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        return out + (x if self.convShortcut is None else self.convShortcut(act))


class NetworkBlock(nn.Module):
    """One group of ``n`` wide blocks, kept under ``.layer`` as in the reference."""

    def __init__(
        self, n: int, in_planes: int, planes: int, stride: int, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(
                WideBasic(
                    in_planes if i == 0 else planes, planes, stride if i == 0 else 1, drop_rate
                )
                for i in range(n)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-k: a 16-channel 3×3 stem, three groups of ``(depth-4)/6`` blocks, BN-ReLU, GAP, fc.

    Args:
        depth: total depth, ``6n + 4`` (16, 28, 34, 40, 70 …).
        widen_factor: k; group widths are 16k, 32k, 64k.
        num_classes: size of the output layer.
        drop_rate: dropout between a block's two convs (0 in TRADES / RiFT).
        mean: per-channel input mean used by the ``normalize`` layer.
        std: per-channel input std used by the ``normalize`` layer.

    Raises:
        UsageError: if ``depth`` is not ``6n + 4`` or ``widen_factor`` < 1.
    """

    def __init__(
        self,
        depth: int = 34,
        widen_factor: int = 10,
        num_classes: int = 10,
        *,
        drop_rate: float = 0.0,
        mean: Sequence[float] = CIFAR_MEAN,
        std: Sequence[float] = CIFAR_STD,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise UsageError(f"WideResNet depth must be 6n+4 (16, 28, 34, 40, 70), not {depth}")
        if widen_factor < 1:
            raise UsageError(f"WideResNet widen factor must be >= 1, not {widen_factor}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) in [0, 1] -> (B, classes)
        out = self.conv1(self.normalize(x))
        out = self.block3(self.block2(self.block1(out)))
        out = F.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))  # (B, 64k, h, w) -> (B, 64k)


def wide_resnet(depth: int, widen_factor: int, num_classes: int = 10, **kw: Any) -> WideResNet:
    """Build WRN-``depth``-``widen_factor``; ``kw`` goes to :class:`WideResNet`.

    Example:
        >>> model = wide_resnet(16, 4, num_classes=10)
    """
    return WideResNet(depth, widen_factor, num_classes, **kw)


def _register(depth: int, widen_factor: int) -> None:
    name = f"wrn-{depth}-{widen_factor}"

    def factory(num_classes: int = 10, **kw: Any) -> nn.Module:
        return wide_resnet(depth, widen_factor, num_classes, **kw)

    factory.__name__ = name.replace("-", "_")
    summary = f"WideResNet-{depth}-{widen_factor}, TRADES/RiFT module names"
    register_model(name, summary=summary, url="https://arxiv.org/abs/1605.07146")(factory)


for _depth, _k in ((16, 4), (28, 10), (34, 10)):
    _register(_depth, _k)
