"""ResNets for 32×32 inputs: the CIFAR family of He et al. (ResNet-20 … 110) and ResNet-18/34/50.

Both share one module layout, the one used by the RiFT reference code (microsoft/robustlearn,
``RiFT/models/resnet.py``) and by the common CIFAR ResNet-20 code: ``conv1, bn1, layer1.0.conv1 …
layerN, linear``, with a block's projection shortcut under ``layerI.J.shortcut.0`` (conv) and
``.1`` (BN). The stem is a 3×3 conv with stride 1 and no max-pool; the head is a global average
pool and one Linear.

Shortcuts where a stage changes width or resolution (He et al. 2016, §3.3 and §4.2):

- option ``"A"``: parameter-free, subsample by 2 and zero-pad the new channels (the paper's CIFAR
  networks; default for ResNet-20 … 110: ResNet-20 has 0.27 M parameters);
- option ``"B"``: 1×1 conv + BN projection (default for ResNet-18/34/50, as in the RiFT code).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from rws.errors import UsageError
from rws.models.layers import CIFAR_MEAN, CIFAR_STD, Normalize
from rws.models.registry import register_model

Shortcut = Literal["A", "B"]
_PAPER = "https://arxiv.org/abs/1512.03385"


class PadShortcut(nn.Module):
    """Option-A shortcut: keep every other pixel, zero-pad the extra channels (no parameters)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.stride, self.extra = stride, out_planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        lo = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, lo, self.extra - lo))  # (B, C, H', W') -> (B, C+extra, H', W')


def _shortcut(in_planes: int, out_planes: int, stride: int, kind: Shortcut) -> nn.Module:
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()  # identity, no parameters
    if kind == "A":
        return PadShortcut(in_planes, out_planes, stride)
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes)
    )


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers plus a shortcut, ReLU after the sum."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: Shortcut = "B"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes, stride, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (carrying the stride), 1×1 expand ×4, each with BN, plus a shortcut."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: Shortcut = "B"):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = _shortcut(in_planes, out_planes, stride, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A stride-1 3×3 stem, one stage per width (the first at stride 1, then stride 2), GAP, Linear.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        num_blocks: blocks per stage.
        widths: base width of each stage (the stem has ``widths[0]`` channels).
        num_classes: size of the output layer.
        shortcut: ``"A"`` (zero-pad) or ``"B"`` (1×1 conv + BN projection).
        mean: per-channel input mean used by the ``normalize`` layer.
        std: per-channel input std used by the ``normalize`` layer.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        num_blocks: Sequence[int],
        widths: Sequence[int],
        num_classes: int = 10,
        *,
        shortcut: Shortcut = "B",
        mean: Sequence[float] = CIFAR_MEAN,
        std: Sequence[float] = CIFAR_STD,
    ) -> None:
        super().__init__()
        if shortcut not in ("A", "B"):
            raise UsageError(f"ResNet shortcut must be 'A' or 'B', not {shortcut!r}")
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        for i, (n, width) in enumerate(zip(num_blocks, widths, strict=True)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(in_planes, width, stride, shortcut))
                in_planes = width * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(widths)
        self.linear = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) in [0, 1] -> (B, classes)
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        for i in range(self.num_stages):
            out = getattr(self, f"layer{i + 1}")(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)  # (B, C, h, w) -> (B, C)
        return self.linear(out)


def cifar_resnet(
    depth: int, num_classes: int = 10, *, shortcut: Shortcut = "A", **kw: Any
) -> ResNet:
    """He et al.'s CIFAR ResNet of ``depth = 6n + 2`` layers: 3 stages of n blocks, 16/32/64 wide.

    Args:
        depth: 20, 32, 44, 56, 110 … (any ``6n + 2``).
        num_classes: size of the output layer.
        shortcut: ``"A"`` (the paper's zero-padding shortcut, default) or ``"B"``.
        **kw: ``mean`` / ``std`` for the normalisation layer.

    Returns:
        The model, taking images in [0, 1].

    Raises:
        UsageError: if ``depth`` is not of the form ``6n + 2``.
    """
    if depth < 8 or (depth - 2) % 6:
        raise UsageError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), not {depth}")
    n = (depth - 2) // 6
    return ResNet(BasicBlock, (n, n, n), (16, 32, 64), num_classes, shortcut=shortcut, **kw)


def _register_cifar(depth: int) -> None:
    def factory(num_classes: int = 10, **kw: Any) -> nn.Module:
        return cifar_resnet(depth, num_classes, **kw)

    factory.__name__ = f"resnet{depth}"
    summary = f"CIFAR ResNet-{depth} (He et al. 2016), 16/32/64 wide, option-A shortcuts"
    register_model(f"resnet{depth}", summary=summary, url=_PAPER)(factory)


for _depth in (20, 32, 44, 56, 110):
    _register_cifar(_depth)

_WIDE = (64, 128, 256, 512)


@register_model("resnet18", summary="ResNet-18, CIFAR stem (3×3 conv, no max-pool)", url=_PAPER)
def resnet18(num_classes: int = 10, **kw: Any) -> nn.Module:
    """ResNet-18 for 32×32 inputs (11.2 M parameters), RiFT module names."""
    return ResNet(BasicBlock, (2, 2, 2, 2), _WIDE, num_classes, **kw)


@register_model("resnet34", summary="ResNet-34, CIFAR stem (3×3 conv, no max-pool)", url=_PAPER)
def resnet34(num_classes: int = 10, **kw: Any) -> nn.Module:
    """ResNet-34 for 32×32 inputs (21.3 M parameters), RiFT module names."""
    return ResNet(BasicBlock, (3, 4, 6, 3), _WIDE, num_classes, **kw)


@register_model("resnet50", summary="ResNet-50, CIFAR stem (3×3 conv, no max-pool)", url=_PAPER)
def resnet50(num_classes: int = 10, **kw: Any) -> nn.Module:
    """ResNet-50 (bottleneck blocks) for 32×32 inputs (23.5 M parameters), RiFT module names."""
    return ResNet(Bottleneck, (3, 4, 6, 3), _WIDE, num_classes, **kw)
